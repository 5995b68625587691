"""Reading PyTorch weight files and writing converted Orbax checkpoints.

The converted folders' layout, and their loading into a run, are
micar_jax/core/weights.py's.

`.pth` files are read with `torch.load(weights_only=True)` (torch is optional and
imported only here); `.safetensors` files with the safetensors numpy API.
"""

import os
from typing import Any

import numpy as np
import orbax.checkpoint as ocp

from micar_jax import errors
from micar_jax.core import weights


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a state dict (name -> array) from `.pth` / `.pt` or `.safetensors`.

  A `.pth` holding {"model": state_dict} (the released snapshots) is unwrapped.

  Raises:
    errors.UserError: missing file or package, unreadable file, not a state dict.
  """
  if not os.path.isfile(path):
    raise errors.UserError(f"{path}: no such file")
  if path.endswith(".safetensors"):
    try:
      from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise errors.UserError("reading .safetensors needs the safetensors package "
                             "(pip install 'micar_jax[convert]')") from None
    try:
      return dict(st_numpy.load_file(path))
    except Exception as e:  # pylint: disable=broad-except
      raise errors.UserError(
          f"{path} is not a readable safetensors file ({weights.first_line(e)})") from None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError(f"reading {path} needs PyTorch (pip install 'micar_jax[torch]'), "
                           "or give a .safetensors file") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"{path}: torch.load(weights_only=True) failed ({weights.first_line(e)}); "
                           "a pickled nn.Module cannot be read, give the state dict "
                           "(model_snapshot.pth)") from None
  if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
    obj = obj["model"]
  if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
    raise errors.UserError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
  # numpy has no bfloat16: widen such tensors (every converted variable is float32).
  return {str(k): (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy()
          for k, v in obj.items()}


def save(directory: str, subdir: str, variables: dict[str, Any]) -> str:
  """Writes {"params", "batch_stats"} to DIR/subdir (replacing it); returns that path."""
  path = os.path.join(weights.absolute(directory), subdir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, variables, force=True)
  checkpointer.wait_until_finished()
  return path
