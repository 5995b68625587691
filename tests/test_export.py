"""`python -m micar_jax.convert export-official`: a run's checkpoint -> the reference's snapshot."""

import importlib.util
import json
import os
import subprocess
import sys

import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from micar_jax import errors
from micar_jax.convert import __main__ as cli
from micar_jax.convert import export, io, official
from micar_jax.core import checkpointing, weights
from micar_jax.core import run as run_lib
from micar_jax.models import model as model_lib

safetensors_numpy = pytest.importorskip("safetensors.numpy")

ROOT = os.path.join(os.path.dirname(__file__), "..")
VOCAB = 30


def _assert_same_state_dict(got, want):
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert got[k].shape == v.shape and got[k].dtype == v.dtype, k
    assert np.array_equal(got[k], v), k


def _assert_same_variables(got, want):
  got, want = flax.traverse_util.flatten_dict(got), flax.traverse_util.flatten_dict(want)
  assert set(got) == set(want)
  for k, v in want.items():
    assert np.array_equal(np.asarray(got[k]), np.asarray(v)), k


@pytest.fixture(scope="module")
def reference_state_dict(load_config):
  """Tiny covctr config, its ModelConfig and a random reference-layout state dict."""
  config = load_config("configs/covctr.py:tiny")
  mc = model_lib.ModelConfig.from_config(config, VOCAB)
  rng = np.random.default_rng(7)
  flat = {k: rng.standard_normal(s).astype(np.float32)
          for k, s in official.variable_shapes(mc).items()}
  state_dict = official.variables_to_official_state_dict(
      flax.traverse_util.unflatten_dict(flat), mc)
  # The buffers as a reference model of this config holds them (torch's table where it can).
  state_dict.update(export.reference_constants(mc))
  return config, mc, state_dict


def test_round_trip_official_ours_official_is_bitwise(reference_state_dict, tmp_path):
  config, mc, sd = reference_state_dict
  variables = official.official_state_dict_to_variables(sd, config)
  again = export.to_state_dict(variables, mc)
  _assert_same_state_dict(again, sd)
  assert again["text_embs.pe.pe"].dtype == np.float32
  assert again["vis_enc.layer1.1.num_batches_tracked"].dtype == np.int64
  # And through the files the command writes.
  formats = [".safetensors"] + ([".pth"] if importlib.util.find_spec("torch") else [])
  for suffix in formats:
    path = str(tmp_path / f"model{suffix}")
    export.write_state_dict(again, path, {"format": "pt"})
    _assert_same_state_dict(io.read_state_dict(path), sd)
  assert sorted(os.listdir(tmp_path)) == sorted(f"model{s}" for s in formats)


def test_a_scanned_checkpoint_exports_bitwise_and_loads_into_either_layout(load_config,
                                                                          tmp_path):
  """Scanned ResNet blocks (stages 2 and 4 here): the checkpoint, the export and a converted
  folder go through `block_layout` at their boundaries, and come out bitwise."""
  config = load_config("configs/covctr.py:tiny")
  config.model.resnet_stages = (1, 3, 1, 4)
  mc = model_lib.ModelConfig.from_config(config, VOCAB)
  rng = np.random.default_rng(3)
  sd = official.variables_to_official_state_dict(flax.traverse_util.unflatten_dict(
      {k: rng.standard_normal(s).astype(np.float32)
       for k, s in official.variable_shapes(mc).items()}), mc)
  sd.update(export.reference_constants(mc))
  variables = official.official_state_dict_to_variables(sd, config)
  assert "stage4_blocks" in variables["params"]["vis_enc"]["backbone"]
  ckpts = checkpointing.Checkpoints(str(tmp_path / "run"))
  ckpts.save_best(3, variables, {"score": 0.5})
  ckpts.close()
  restored = export.restore_variables(str(tmp_path / "run"), "best", 3, mc)
  assert "stage4_block3" in restored["params"]["vis_enc"]["backbone"]
  _assert_same_state_dict(export.to_state_dict(restored, mc), sd)
  # A folder written scanned loads into a per-block model, and back.
  folder = tmp_path / "converted"
  io.save(str(folder), weights.MODEL_DIR, variables)
  per_block = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, np.float32),
                           flax.traverse_util.unflatten_dict(official.variable_shapes(mc)),
                           is_leaf=lambda x: isinstance(x, tuple))
  loaded = weights.load_model_init(str(folder), per_block)
  _assert_same_state_dict(export.to_state_dict(loaded, mc), sd)
  io.save(str(tmp_path / "per_block"), weights.MODEL_DIR, jax.tree.map(np.asarray, loaded))
  scanned = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
  _assert_same_variables(weights.load_model_init(str(tmp_path / "per_block"), scanned), variables)


def test_bfloat16_variables_are_widened(reference_state_dict):
  config, mc, sd = reference_state_dict
  variables = official.official_state_dict_to_variables(sd, config)
  bf16 = jax.tree.map(lambda a: np.asarray(a).astype(jax.numpy.bfloat16), variables)
  out = export.to_state_dict(bf16, mc)
  assert out["proj.1.weight"].dtype == np.float32
  np.testing.assert_allclose(out["proj.1.weight"], sd["proj.1.weight"], rtol=1e-2, atol=1e-2)


def test_output_and_step_errors(tmp_path):
  with pytest.raises(errors.UserError, match="give a FILE.pth .* or a FILE.safetensors"):
    export.check_output(str(tmp_path / "model.bin"))
  if importlib.util.find_spec("torch") is None:
    with pytest.raises(errors.UserError,
                       match=r"needs PyTorch \(pip install 'micar_jax\[torch\]'\)"):
      export.check_output(str(tmp_path / "model.pth"))
  for kind, step in (("best", 4), ("latest", 2), ("latest", 4)):
    os.makedirs(tmp_path / "checkpoints" / kind / str(step) / "state")
  os.makedirs(tmp_path / "checkpoints" / "latest" / "6.orbax-checkpoint-tmp-1" / "state")
  assert export.select_step(str(tmp_path), "best") == ("best", 4)
  assert export.select_step(str(tmp_path), "latest") == ("latest", 4)
  assert export.select_step(str(tmp_path), "4") == ("best", 4)
  assert export.select_step(str(tmp_path), "2") == ("latest", 2)
  with pytest.raises(errors.UserError, match=r"no checkpoint of step 3 \(best steps \[4\], "
                                             r"latest steps \[2, 4\]\)"):
    export.select_step(str(tmp_path), "3")
  with pytest.raises(errors.UserError, match="expected best, latest or a step number"):
    export.select_step(str(tmp_path), "newest")
  with pytest.raises(errors.UserError, match="has no best checkpoint"):
    export.select_step(str(tmp_path / "nothing"), "best")
  assert export.vocab_paths("out/model_snapshot.pth") == (
      "out/model_snapshot.token2id.json", "out/model_snapshot.id2token.json")


@pytest.fixture(scope="module")
def trained_run(tiny_config, tmp_path_factory):
  """(config, workdir) of a tiny run trained 4 steps: a best and latest checkpoints."""
  from micar_jax.training import train  # pylint: disable=g-import-not-at-top
  folder = tmp_path_factory.mktemp("export_run")
  config = tiny_config(folder, max_steps=4)
  workdir = str(folder / "run")
  train.train_and_evaluate(config, workdir)
  return config, workdir


def _stored_variables(workdir, kind, step):
  """{params, batch_stats} as Orbax restores the step without any target."""
  state = ocp.StandardCheckpointer().restore(
      os.path.abspath(os.path.join(workdir, "checkpoints", kind, str(step), "state")))
  return {c: state[c] for c in ("params", "batch_stats")}


def test_export_reads_back_bitwise(trained_run, tmp_path, monkeypatch):
  config, workdir = trained_run
  for step in ("best", "latest"):
    kind, number = export.select_step(workdir, step)
    out = str(tmp_path / step / "model.safetensors")
    summary = export.export_official(config, workdir, step, out, "configs/synthetic.py:tiny")
    assert f"of the {kind} checkpoint (step {number}, V=" in summary
    assert "--config=configs/synthetic.py:tiny" in summary
    assert "note: the backbone (stages (1, 1, 1, 1), width 8) is not the reference's" in summary
    token2id, id2token = export.vocab_paths(out)
    with open(os.path.join(workdir, "token2id.json")) as f:
      vocab = json.load(f)
    with open(token2id) as f:
      assert json.load(f) == vocab
    with open(id2token) as f:
      assert json.load(f) == {str(i): t for t, i in vocab.items()}

    converted = str(tmp_path / step / "converted")
    cli.convert_official(out, token2id, config, "configs/synthetic.py:tiny", converted)
    stored = _stored_variables(workdir, kind, number)
    mc = model_lib.ModelConfig.from_config(config, len(vocab))
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, np.float32),
                            flax.traverse_util.unflatten_dict(official.variable_shapes(mc)),
                            is_leaf=lambda x: isinstance(x, tuple))
    _assert_same_variables(weights.load_model_init(converted, abstract), stored)
  # The best checkpoint, as the run itself restores it, is what was exported.
  run = run_lib.Run(config, workdir)
  _assert_same_variables(export.restore_variables(workdir, *export.select_step(workdir, "best"),
                                                  run.model_config), run.best_variables())
  run.checkpoints.close()


def test_export_errors(trained_run, tmp_path, load_config):
  config, workdir = trained_run
  out = str(tmp_path / "m.safetensors")
  with pytest.raises(errors.UserError, match="is not a run folder"):
    export.export_official(config, str(tmp_path / "absent"), "best", out)
  with pytest.raises(errors.UserError, match="has no checkpoint of step 999"):
    export.export_official(config, workdir, "999", out)
  other = config.copy_and_resolve_references()
  other.model.num_layers = 2
  with pytest.raises(errors.UserError, match="incompatible config") as info:
    export.export_official(other, workdir, "best", out)
  assert "\n" not in str(info.value)
  # A damaged step is named, not exported.
  kind, step = export.select_step(workdir, "latest")
  step_dir = os.path.join(workdir, "checkpoints", kind, str(step))
  with open(os.path.join(step_dir, checkpointing.CHECKSUMS)) as f:
    victim = sorted(json.load(f))[0]
  path = os.path.join(step_dir, victim)
  with open(path, "rb") as f:
    original = f.read()
  try:
    with open(path, "ab") as f:
      f.write(b"x")
    with pytest.raises(errors.UserError, match=f"checkpoint {step_dir} is damaged"):
      export.export_official(config, workdir, "latest", out)
  finally:
    with open(path, "wb") as f:
      f.write(original)
  assert not os.path.exists(out)


def test_command_line(trained_run, tmp_path):
  config, workdir = trained_run
  out = str(tmp_path / "snap.safetensors")
  args = ["--config=configs/synthetic.py:tiny", f"--config.data_dir={config.data_dir}",
          "--config.data.synthetic_sizes=16,4,4", "--config.data.text_seq_len=12",
          "--config.mesh.num_devices=1", f"--workdir={workdir}", f"--out={out}"]
  run = lambda *a: subprocess.run([sys.executable, "-m", "micar_jax.convert", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300, check=False)
  done = run("export-official", *args, "--step=latest")
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith("wrote ")
  assert os.path.isfile(out) and os.path.isfile(export.vocab_paths(out)[0])
  bad = run("export-official", *args, "--step=12345")
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith(
      f"error: run {workdir} has no checkpoint of step 12345")
  assert "Traceback" not in bad.stderr
  usage = run("export-official", "--config=configs/synthetic.py:tiny")
  assert usage.stderr.strip().splitlines()[-1] == "error: missing --workdir, --out"


# ---- the reference itself (torch, torchvision, einops, rotary-embedding-torch) ----


@pytest.mark.slow
def test_reference_loads_export_strictly_and_decodes_the_same(load_config, tmp_path):
  """The reference's CaptionModel takes the .pth with strict=True and decodes as we do.

  Needs torch (and the reference's packages) and MICAR_REFERENCE_SRC, a checkout
  of the reference code. A random reference model (BatchNorm and norms randomised
  so that they matter) is converted into a run folder's best checkpoint; the
  export of that run goes into a fresh reference model of another seed.
  """
  source = os.environ.get("MICAR_REFERENCE_SRC")
  if not source or importlib.util.find_spec("torch") is None:
    pytest.skip("needs torch and MICAR_REFERENCE_SRC (a checkout of the reference code)")
  import ml_collections  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from micar_jax import decode  # pylint: disable=g-import-not-at-top
  from micar_jax.data.tokenizer import EOS, PAD, SOS  # pylint: disable=g-import-not-at-top
  from micar_jax.tools import parity  # pylint: disable=g-import-not-at-top
  from micar_jax.tools.torch_reference import build_reference  # pylint: disable=g-import-not-at-top

  config = load_config("configs/covctr.py:tiny")
  config.model.resnet_depth, config.model.resnet_stages, config.model.resnet_width = 101, (), 64
  config.model.dtype = "float32"
  config.mesh.num_devices = 1
  config.data.text_seq_len = 12
  reference = build_reference(source, config, VOCAB, seed=0)
  original = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
  variables = official.official_state_dict_to_variables(original, config)

  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with open(os.path.join(workdir, "token2id.json"), "w") as f:
    json.dump({"<pad>": PAD, "<sos>": SOS, "<eos>": EOS, "<unk>": 3,
               **{f"w{i}": i for i in range(4, VOCAB)}}, f)
  run = run_lib.Run(config, workdir)
  run.checkpoints.save_best(1, variables, {"score": 0.0})
  run.checkpoints.close()
  out = str(tmp_path / "export" / "model_snapshot.pth")
  export.export_official(config, workdir, "best", out)

  fresh = build_reference(source, config, VOCAB, seed=1)
  snapshot = torch.load(out, map_location="cpu", weights_only=True)
  fresh.load_state_dict(snapshot["model"], strict=True)
  _assert_same_state_dict({k: v.numpy() for k, v in fresh.state_dict().items()}, original)

  images = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
  steps = config.data.text_seq_len
  with torch.no_grad():
    ref_ids = fresh.beam_search(torch.from_numpy(images), SOS, EOS, PAD, 3, steps).numpy()
  mc = model_lib.ModelConfig.from_config(config, VOCAB)
  generate = decode.make_generate_fn(
      mc, ml_collections.ConfigDict({"decode": "greedy", "beam_width": 1, "length_penalty": 0.0}))
  ours = np.asarray(generate(variables["params"], variables["batch_stats"],
                             images.transpose(0, 2, 3, 1)))
  same, detail = parity.same_generation(ref_ids, ours)
  assert same, detail
  assert np.sum(ours > 3) >= len(images), ours  # words, not a stop at once
