"""Command line of the converters (see micar_jax/convert/__init__.py for usage)."""

import json
import os
import shutil

from absl import flags

from micar_jax import cli, errors
from micar_jax.core import weights as weights_lib

_COMMANDS = ("torchvision-resnet", "official", "export-official")


def define_flags() -> None:
  """Declares the flags (only when run as a program: tests import this module)."""
  flags.DEFINE_string("weights", None, "torchvision ResNet state dict (.pth/.safetensors).")
  flags.DEFINE_string("checkpoint", None,
                      "Official model_snapshot.pth (or a .safetensors state dict).")
  flags.DEFINE_string("token2id", None, "The checkpoint's token2id.json vocabulary.")
  cli.define_config_flag(required=False, help_text="Dataset config (configs/<name>.py).")
  flags.DEFINE_string("out", None, "Output folder (export-official: FILE.pth or FILE.safetensors).")
  flags.DEFINE_string("workdir", None, "export-official: the run folder.")
  flags.DEFINE_string("step", "best", "export-official: best, latest or a step number.")


def _require(**values) -> None:
  absent = [f"--{k}" for k, v in values.items() if not v]
  if absent:
    raise errors.UserError(f"missing {', '.join(absent)}")


def convert_torchvision(weights: str, out: str) -> str:
  """Writes OUT/backbone and OUT/resnet.json; returns a one-line summary."""
  from micar_jax.convert import io, torchvision_resnet  # pylint: disable=g-import-not-at-top
  stages, width, tree = torchvision_resnet.state_dict_to_backbone(io.read_state_dict(weights))
  depth = torchvision_resnet.depth_of(stages)
  io.save(out, weights_lib.BACKBONE_DIR, tree)
  with open(os.path.join(out, weights_lib.RESNET_JSON), "w") as f:
    json.dump({"depth": depth, "stage_sizes": list(stages), "width": width,
               "source": os.path.basename(weights)}, f, indent=1)
  return (f"wrote ResNet-{depth or stages} backbone to {out}: use "
          f"--config.model.vision_init_from={out}")


def _read_vocab(path: str, vocab_size: int) -> None:
  try:
    with open(path) as f:
      vocab = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"{path}: not a readable JSON vocabulary ({e})") from None
  if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(vocab_size)):
    raise errors.UserError(f"{path} does not map {vocab_size} tokens to ids 0..{vocab_size - 1} "
                           "(the checkpoint's embedding has that many rows)")


def convert_official(checkpoint: str, token2id: str, config, config_path: str, out: str) -> str:
  """Writes OUT/variables, OUT/token2id.json and OUT/conversion.json; returns a summary."""
  from micar_jax.convert import io, official  # pylint: disable=g-import-not-at-top
  state_dict = io.read_state_dict(checkpoint)
  variables = official.official_state_dict_to_variables(state_dict, config)
  vocab_size = int(variables["params"]["text_embs"]["embedding"].shape[0])
  _read_vocab(token2id, vocab_size)
  io.save(out, weights_lib.MODEL_DIR, variables)
  shutil.copyfile(token2id, os.path.join(out, "token2id.json"))
  with open(os.path.join(out, "conversion.json"), "w") as f:
    json.dump({"source": os.path.basename(checkpoint), "config": config_path,
               "vocab_size": vocab_size}, f, indent=1)
  return (f"wrote {config.dataset} model (V={vocab_size}) to {out}: use --config={config_path} "
          f"--config.init_from={out} --config.data.vocab_path={out}/token2id.json")


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in _COMMANDS:
    raise errors.UserError(f"expected one command: {', '.join(_COMMANDS)}")
  f = flags.FLAGS
  if argv[1] == "torchvision-resnet":
    _require(weights=f.weights, out=f.out)
    print(convert_torchvision(f.weights, f.out))
  elif argv[1] == "official":
    _require(checkpoint=f.checkpoint, token2id=f.token2id, config=f.config, out=f.out)
    print(convert_official(f.checkpoint, f.token2id, f.config, cli.config_path(), f.out))
  else:
    from micar_jax.convert import export  # pylint: disable=g-import-not-at-top
    _require(config=f.config, workdir=f.workdir, out=f.out)
    print(export.export_official(f.config, f.workdir, f.step, f.out, cli.config_path()))


if __name__ == "__main__":
  cli.run(main, define_flags)
