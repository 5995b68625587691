"""Weight files, the converters' command line, and loading converted checkpoints."""

import importlib.util
import json
import os
import subprocess
import sys

import flax.traverse_util
import jax
import numpy as np
import pytest

from micar_jax import errors
from micar_jax.convert import __main__ as cli
from micar_jax.convert import io, names, official, torchvision_resnet
from micar_jax.core import weights
from micar_jax.models import model as model_lib

safetensors_numpy = pytest.importorskip("safetensors.numpy")

ROOT = os.path.join(os.path.dirname(__file__), "..")
VOCAB = 12


def random_flat(shapes, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def model_shapes(load_config):
  config = load_config("configs/covctr.py:tiny")
  return official.variable_shapes(model_lib.ModelConfig.from_config(config, VOCAB))


def zeros_like_model(shapes):
  return flax.traverse_util.unflatten_dict({k: np.zeros(s, np.float32) for k, s in shapes.items()})


def torchvision_state_dict(stages=(1, 1, 1, 1), width=8):
  flat = random_flat(torchvision_resnet.backbone_shapes(stages, width), seed=1)
  sd = names.to_state_dict(flat, names.TORCHVISION)
  sd["fc.weight"] = np.zeros((10, 32 * width), np.float32)
  sd["fc.bias"] = np.zeros((10,), np.float32)
  return sd, flat


def test_torchvision_resnet_round_trip(tmp_path, model_shapes, monkeypatch):
  sd, flat = torchvision_state_dict()
  assert "layer1.0.downsample.1.running_mean" in sd and "bn1.num_batches_tracked" in sd
  path = str(tmp_path / "resnet.safetensors")
  safetensors_numpy.save_file(sd, path)
  out = str(tmp_path / "resnet")
  assert "--config.model.vision_init_from=" in cli.convert_torchvision(path, out)
  with open(os.path.join(out, weights.RESNET_JSON)) as f:
    assert json.load(f) == {"depth": None, "stage_sizes": [1, 1, 1, 1], "width": 8,
                            "source": "resnet.safetensors"}
  monkeypatch.chdir(tmp_path)  # --config.model.vision_init_from=resnet, relative to the cwd
  variables = weights.load_vision_init("resnet", zeros_like_model(model_shapes))
  for (collection, *rest), value in flat.items():
    got = variables[collection]["vis_enc"]["backbone"]
    for key in rest:
      got = got[key]
    np.testing.assert_array_equal(got, value, err_msg=str(rest))
  # Everything outside the backbone is left alone.
  assert not np.any(variables["params"]["proj"]["kernel"])


def test_vision_init_reports_config_mismatch(tmp_path, load_config):
  sd, _ = torchvision_state_dict()
  path = str(tmp_path / "resnet.safetensors")
  safetensors_numpy.save_file(sd, path)
  out = str(tmp_path / "resnet")
  cli.convert_torchvision(path, out)
  config = load_config("configs/covctr.py:tiny")
  config.model.resnet_width = 16
  config.model.resnet_stages = (1, 2, 1, 1)
  shapes = official.variable_shapes(model_lib.ModelConfig.from_config(config, VOCAB))
  with pytest.raises(weights.MismatchError) as info:
    weights.load_vision_init(out, zeros_like_model(shapes))
  e = info.value
  assert "params/stage2_block1/conv1/kernel" in e.missing
  assert "params/stem_conv/kernel (7, 7, 3, 8) expected (7, 7, 3, 16)" in e.wrong
  assert str(e).startswith(f"{out} (stages [1, 1, 1, 1], width 8) does not fit config.model")


def test_torchvision_errors():
  with pytest.raises(weights.MismatchError,
                     match="not a torchvision ResNet state dict: 5 missing: conv1.weight"):
    torchvision_resnet.state_dict_to_backbone({"weight": np.zeros(3)})
  sd, _ = torchvision_state_dict()
  del sd["layer2.0.bn1.running_var"]
  sd["layer2.0.bn1.weight"] = np.zeros(3, np.float32)
  sd["layer9.extra"] = np.zeros(1, np.float32)
  with pytest.raises(weights.MismatchError) as info:
    torchvision_resnet.state_dict_to_backbone(sd)
  assert info.value.missing == ["layer2.0.bn1.running_var"]
  assert info.value.unexpected == ["layer9.extra"]
  assert info.value.wrong == ["layer2.0.bn1.weight (3,) expected (16,)"]


def test_official_round_trip_through_files(tmp_path, model_shapes, monkeypatch, load_config):
  config = load_config("configs/covctr.py:tiny")
  mc = model_lib.ModelConfig.from_config(config, VOCAB)
  flat = random_flat(model_shapes)
  sd = official.variables_to_official_state_dict(flax.traverse_util.unflatten_dict(flat), mc)
  checkpoint = str(tmp_path / "model.safetensors")
  safetensors_numpy.save_file(sd, checkpoint)
  token2id = tmp_path / "token2id.json"
  token2id.write_text(json.dumps({f"w{i}": i for i in range(VOCAB)}))
  out = str(tmp_path / "converted")
  cli.convert_official(checkpoint, str(token2id), config, "configs/covctr.py:tiny", out)
  assert json.loads((tmp_path / "converted" / "token2id.json").read_text())["w3"] == 3
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          zeros_like_model(model_shapes))
  monkeypatch.chdir(tmp_path)  # --config.init_from=converted, relative to the cwd
  restored = flax.traverse_util.flatten_dict(weights.load_model_init("converted", abstract))
  assert set(restored) == set(flat)
  for k, value in flat.items():
    np.testing.assert_array_equal(np.asarray(restored[k]), value, err_msg=str(k))

  token2id.write_text(json.dumps({"a": 0}))
  with pytest.raises(errors.UserError, match="does not map 12 tokens to ids 0..11"):
    cli.convert_official(checkpoint, str(token2id), config, "c.py", str(tmp_path / "bad"))

  config.model.num_layers = 2
  shapes = official.variable_shapes(model_lib.ModelConfig.from_config(config, VOCAB))
  with pytest.raises(weights.MismatchError) as info:
    weights.load_model_init(out, zeros_like_model(shapes))
  assert "params/decoder_1/moe/w1" in info.value.missing
  assert str(info.value).startswith(f"converted model {out} does not fit this config")


def test_missing_imagenet_weights_name_the_convert_command(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(errors.UserError) as info:
    weights.load_vision_init("weights/resnet101_imagenet1k_v2", {})
  message = str(info.value)
  assert "\n" not in message
  assert ("python -m micar_jax.convert torchvision-resnet --weights=resnet101-cd907fc2.pth "
          "--out=weights/resnet101_imagenet1k_v2") in message
  assert "--config.model.vision_init_from=scratch" in message


def test_load_errors(tmp_path):
  with pytest.raises(errors.UserError, match="is not a converted folder"):
    weights.load_model_init(str(tmp_path), {})
  with pytest.raises(errors.UserError, match="no such file"):
    io.read_state_dict(str(tmp_path / "absent.safetensors"))
  junk = tmp_path / "junk.safetensors"
  junk.write_bytes(b"not a safetensors file")
  with pytest.raises(errors.UserError, match="is not a readable safetensors file"):
    io.read_state_dict(str(junk))


def test_read_pth(tmp_path):
  path = str(tmp_path / "model_snapshot.pth")
  if importlib.util.find_spec("torch") is None:
    with open(path, "wb") as f:
      f.write(b"\x80")
    with pytest.raises(errors.UserError, match="needs PyTorch"):
      io.read_state_dict(path)
    return
  import torch  # pylint: disable=g-import-not-at-top
  sd = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
  torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
  np.testing.assert_array_equal(io.read_state_dict(path)["a.weight"], sd["a.weight"])


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "micar_jax.convert", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)


def test_command_line(tmp_path):
  sd, _ = torchvision_state_dict()
  weights_file = str(tmp_path / "resnet.safetensors")
  safetensors_numpy.save_file(sd, weights_file)
  out = str(tmp_path / "resnet")
  done = _run_cli("torchvision-resnet", f"--weights={weights_file}", f"--out={out}")
  assert done.returncode == 0, done.stderr
  assert os.path.isdir(os.path.join(out, weights.BACKBONE_DIR))

  bad = _run_cli("official", f"--checkpoint={weights_file}", f"--token2id={weights_file}",
                 "--config=configs/covctr.py:tiny", f"--out={tmp_path / 'x'}")
  assert bad.returncode == 2
  lines = bad.stderr.strip().splitlines()
  assert lines[-1] == ("error: not a MicarVLMoE state dict: 1 missing: "
                       "text_embs.embedding.weight")
  assert "Traceback" not in bad.stderr

  usage = _run_cli("official", "--config=configs/covctr.py")
  assert usage.returncode == 2
  assert usage.stderr.strip().splitlines()[-1] == "error: missing --checkpoint, --token2id, --out"
