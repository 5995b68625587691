"""A run's checkpoint -> the reference's snapshot (`python -m micar_jax.convert export-official`).

The file holds the state dict `official` reads (docs/checkpoint_layout.md),
the reference's fixed buffers (`text_embs.pe.pe`, every `rope.freqs`) and
BatchNorm counters included, so `CaptionModel.load_state_dict(strict=True)`
accepts it:

  FILE.pth          `torch.save({"model": state_dict})`, as the released snapshots
                    (needs the torch extra);
  FILE.safetensors  the bare state dict (safetensors' numpy API, no torch).

Beside it go the run's vocabulary as `<stem>.token2id.json` and
`<stem>.id2token.json`: the reference's tokenizer reads both files (and rebuilds
its vocabulary from the train split when either is missing), and naming them
after the file lets several exports share a folder.
"""

import json
import os
import shutil
from typing import Any

import flax.traverse_util
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from micar_jax import errors
from micar_jax.convert import official
from micar_jax.core import checkpointing, weights
from micar_jax.data import tokenizer as tokenizer_lib
from micar_jax.models import block_layout
from micar_jax.models import model as model_lib

STEPS = ("best", "latest")
_FORMATS = (".pth", ".pt", ".safetensors")
# The reference's ResNet-101 (torchvision's stage sizes and stem width).
_REFERENCE_BACKBONE = ((3, 4, 23, 3), 64)


def vocab_paths(out: str) -> tuple[str, str]:
  """(token2id, id2token) JSON paths written beside `out` (`<stem>.token2id.json`, ...)."""
  stem = os.path.splitext(out)[0]
  return f"{stem}.token2id.json", f"{stem}.id2token.json"


def check_output(out: str) -> None:
  """Fails before any restore unless `out` has a known suffix and its writer is installed.

  Raises:
    errors.UserError: another suffix, or torch / safetensors missing.
  """
  if not out.endswith(_FORMATS):
    raise errors.UserError(f"--out={out}: give a FILE.pth (torch.save, as the released "
                           "snapshots) or a FILE.safetensors")
  if out.endswith(".safetensors"):
    try:
      from safetensors import numpy as _  # noqa: F401  pylint: disable=g-import-not-at-top
    except ImportError:
      raise errors.UserError("writing .safetensors needs the safetensors package "
                             "(pip install 'micar_jax[convert]')") from None
    return
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(f"writing {out} needs PyTorch (pip install 'micar_jax[torch]'), "
                           "or give a .safetensors file") from None


def _steps(workdir: str, kind: str) -> list[int]:
  """Finished steps of checkpoints/<kind>, ascending (Orbax's temporary folders excluded)."""
  root = os.path.join(workdir, "checkpoints", kind)
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root)
                if n.isdigit() and os.path.isdir(os.path.join(root, n, "state")))


def select_step(workdir: str, step: str) -> tuple[str, int]:
  """(kind, step) of the checkpoint `--step` names: best, latest, or a step number.

  A number is looked up among the best steps first (they hold only the
  variables), then the latest ones.

  Raises:
    errors.UserError: no such checkpoint (the existing steps are listed).
  """
  found = {kind: _steps(workdir, kind) for kind in STEPS}
  listing = f"best steps {found['best'] or 'none'}, latest steps {found['latest'] or 'none'}"
  if step in STEPS:
    if not found[step]:
      raise errors.UserError(f"run {workdir} has no {step} checkpoint ({listing})")
    return step, found[step][-1]
  if not step.isdigit():
    raise errors.UserError(f"--step={step}: expected best, latest or a step number")
  for kind in STEPS:
    if int(step) in found[kind]:
      return kind, int(step)
  raise errors.UserError(f"run {workdir} has no checkpoint of step {step} ({listing})")


def restore_variables(workdir: str, kind: str, step: int, mc: model_lib.ModelConfig
                      ) -> dict[str, Any]:
  """{params, batch_stats} of one checkpoint as host numpy arrays (their stored dtypes).

  A best checkpoint holds exactly these; a latest one holds the whole TrainState,
  of which only they are read (the optimizer state is never loaded).

  Raises:
    errors.UserError: the step fails its checksums or cannot be read.
    weights.MismatchError: names or shapes differ from the model of `mc`.
  """
  step_dir = os.path.join(workdir, "checkpoints", kind, str(step))
  problem = checkpointing.verify(step_dir)
  if problem:
    raise errors.UserError(f"checkpoint {step_dir} is damaged: {problem}")
  path = weights.absolute(os.path.join(step_dir, "state"))
  try:
    tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"{path} is not an Orbax checkpoint ({weights.first_line(e)})") from None
  # Compared and returned in the unscanned layout (the converter's); the step's own
  # layout (scanned or not, `block_layout`) is only how it is read.
  shapes = official.variable_shapes(mc)
  stored_tree = {c: tree.get(c, {}) for c in ("params", "batch_stats")}
  stored = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(
      block_layout.unstack(stored_tree)).items()}
  missing = ["/".join(k) for k in shapes if k not in stored]
  unexpected = ["/".join(k) for k in stored if k not in shapes]
  wrong = [f"{'/'.join(k)} {stored[k]} expected {s}" for k, s in shapes.items()
           if k in stored and stored[k] != s]
  if missing or unexpected or wrong:
    raise weights.MismatchError(f"checkpoint {step_dir} does not fit the config",
                                missing, unexpected, wrong)
  # Only params and batch_stats, straight to host arrays: a latest step's optimizer
  # state stays on disk, and no device or mesh is needed.
  target = block_layout.relayout(flax.traverse_util.unflatten_dict(
      {k: jax.ShapeDtypeStruct(s, np.float32) for k, s in shapes.items()}), stored_tree)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  try:
    return block_layout.unstack(ocp.PyTreeCheckpointer().restore(
        path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                          partial_restore=True)))
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"{path} cannot be read ({weights.first_line(e)})") from None


def reference_constants(mc: model_lib.ModelConfig) -> dict[str, np.ndarray]:
  """The reference's fixed buffers (`official.constants`) with its own position table.

  Our table is the reference's bit for bit where the model ships torch's table
  (d_model 512, up to 256 positions); elsewhere numpy's float32 exp/sin/cos differ
  from torch's in the last bits. With torch installed the table is computed as
  the reference's PositionalEmbedding does, so the buffer is exactly what a
  reference model of this config holds; without it, ours (within 1e-5).
  """
  out = official.constants(mc)
  table = official.torch_position_table(mc.max_len, mc.d_model)
  if table is not None:
    out["text_embs.pe.pe"] = table[None]
  return out


def to_state_dict(variables: dict[str, Any], mc: model_lib.ModelConfig) -> dict[str, np.ndarray]:
  """Our variables -> the reference's state dict, float32 (bf16 leaves widened), C-contiguous."""
  state_dict = official.variables_to_official_state_dict(variables, mc)
  state_dict.update(reference_constants(mc))
  # kind "V": ml_dtypes' bfloat16, which safetensors' numpy writer cannot store. (Not
  # np.ascontiguousarray: it turns the 0-d num_batches_tracked into shape (1,).)
  return {k: np.asarray(v.astype(np.float32) if v.dtype.kind in "fV" else v, order="C")
          for k, v in state_dict.items()}


def write_state_dict(state_dict: dict[str, np.ndarray], out: str,
                     metadata: dict[str, str]) -> None:
  """Writes FILE.pth ({"model": state_dict}) or FILE.safetensors, replacing it atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = f"{out}.tmp{os.getpid()}"
  try:
    if out.endswith(".safetensors"):
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
      st_numpy.save_file(state_dict, tmp, metadata=metadata)
    else:
      import torch  # pylint: disable=g-import-not-at-top
      torch.save({"model": {k: torch.from_numpy(v) for k, v in state_dict.items()}}, tmp)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_vocab(vocab_path: str, out: str, vocab_size: int) -> tuple[str, str]:
  """Copies the run's token2id.json beside `out` and writes its inverse; returns both paths.

  Raises:
    errors.UserError: the vocabulary does not map `vocab_size` tokens to 0..V-1.
  """
  with open(vocab_path, encoding="utf-8") as f:
    token2id = json.load(f)
  if not isinstance(token2id, dict) or sorted(token2id.values()) != list(range(vocab_size)):
    raise errors.UserError(f"{vocab_path} does not map {vocab_size} tokens to ids "
                           f"0..{vocab_size - 1} (the model's embedding has that many rows)")
  token2id_out, id2token_out = vocab_paths(out)
  shutil.copyfile(vocab_path, token2id_out)
  with open(id2token_out, "w", encoding="utf-8") as f:
    json.dump({str(i): t for t, i in sorted(token2id.items(), key=lambda kv: kv[1])}, f,
              ensure_ascii=False)
  return token2id_out, id2token_out


def reference_notes(mc: model_lib.ModelConfig) -> list[str]:
  """Why the reference's CaptionModel would not take (or not reproduce) this model, if so."""
  notes = []
  if (tuple(mc.stage_sizes), mc.resnet_width) != _REFERENCE_BACKBONE:
    notes.append(f"the backbone (stages {tuple(mc.stage_sizes)}, width {mc.resnet_width}) is "
                 "not the reference's ResNet-101: its CaptionModel will not load this file")
  if mc.num_views != 1:
    notes.append(f"num_views={mc.num_views}: the reference reads one image per report")
  if mc.moe_combine != "sum":
    notes.append(f"moe_combine={mc.moe_combine!r}: the reference sums its k experts unweighted, "
                 "so its outputs will differ")
  return notes


def _vocab_file(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The vocabulary a Run of `config` in `workdir` loads (checked before Run would build one)."""
  if config.data.tokenizer != "word":
    raise errors.UserError(f"config.data.tokenizer={config.data.tokenizer!r}: the reference has "
                           "only the word tokenizer (token2id.json)")
  converted = os.path.join(config.init_from, "token2id.json") if config.init_from else ""
  path = (config.data.vocab_path or (converted if os.path.exists(converted) else "")
          or os.path.join(workdir, tokenizer_lib.VOCAB_FILES["word"]))
  if not os.path.isfile(path):
    raise errors.UserError(f"run {workdir} has no vocabulary ({path} is missing)")
  return path


def export_official(config: ml_collections.ConfigDict, workdir: str, step: str, out: str,
                    config_path: str = "") -> str:
  """Writes one checkpoint of the run in `workdir` as a reference snapshot; returns a summary.

  Args:
    config: the run's config (its model and vocabulary settings are checked
      against the run's run_config.json).
    workdir: the run folder (--workdir of training).
    step: "best", "latest" or a step number.
    out: FILE.pth or FILE.safetensors; the vocabulary goes beside it (`vocab_paths`).
    config_path: the --config given, for the printed follow-up command.

  Raises:
    errors.UserError: bad --out, missing run / step / vocabulary, damaged or
      mismatched checkpoint, incompatible config (one line each).
  """
  from micar_jax.core import run as run_lib  # pylint: disable=g-import-not-at-top
  check_output(out)
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise errors.UserError(f"--workdir={workdir} is not a run folder (it has no checkpoints/)")
  kind, number = select_step(workdir, step)
  vocab = _vocab_file(config, workdir)
  run = run_lib.Run(config, workdir)  # tokenizer, model config, run_config.json check
  try:
    mc = run.model_config
    variables = restore_variables(workdir, kind, number, mc)
  finally:
    run.checkpoints.close()
  state_dict = to_state_dict(variables, mc)
  write_state_dict(state_dict, out, {"format": "pt", "source": "micar_jax",
                                     "checkpoint": f"{kind}/{number}"})
  token2id_out, id2token_out = write_vocab(vocab, out, mc.vocab_size)
  summary = (f"wrote {len(state_dict)} tensors of the {kind} checkpoint (step {number}, "
             f"V={mc.vocab_size}) to {out}, vocabulary to {token2id_out} and {id2token_out}; "
             f"read back with `python -m micar_jax.convert official --checkpoint={out} "
             f"--token2id={token2id_out} --config={config_path or 'CONFIG'} --out=DIR`")
  return "\n".join([summary] + [f"note: {n}" for n in reference_notes(mc)])
