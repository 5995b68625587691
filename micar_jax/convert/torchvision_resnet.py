"""A torchvision ResNet state dict (ImageNet weights) -> our vis_enc/backbone subtree."""

import re
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from micar_jax.convert import names
from micar_jax.core import weights
from micar_jax.models import resnet

_BLOCK_CONV = re.compile(r"layer([1-4])\.(\d+)\.conv1\.weight$")


def backbone_shapes(stage_sizes: tuple[int, ...], width: int) -> dict[tuple[str, ...], tuple]:
  """Flat (collection, module..., leaf) -> shape of our ResNet's variables, unscanned.

  Converted backbones are written in this layout; loading stacks them for a
  scanned model (`weights.load_vision_init`).
  """
  model = resnet.ResNet(stage_sizes, width, scan_blocks=False)
  images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, False), images)
  flat = flax.traverse_util.flatten_dict(nn.meta.unbox(abstract))
  return {k: tuple(v.shape) for k, v in flat.items()}


def depth_of(stage_sizes: tuple[int, ...]) -> int | None:
  """50 / 101 / 152 for torchvision's stage sizes, None for others."""
  return {v: k for k, v in resnet.RESNET_STAGES.items()}.get(tuple(stage_sizes))


def state_dict_to_backbone(state_dict: dict[str, np.ndarray]
                           ) -> tuple[tuple[int, ...], int, dict[str, Any]]:
  """Converts torchvision ResNet weights (fc.* is dropped).

  Args:
    state_dict: torchvision name (conv1.weight, layer3.22.bn2.running_var, ...) -> array.

  Returns:
    (stage_sizes, stem width, {"params": ..., "batch_stats": ...}) where the tree is
    what the model holds under vis_enc/backbone.

  Raises:
    weights.MismatchError: not a torchvision ResNet, or incomplete / wrongly shaped.
  """
  blocks = [_BLOCK_CONV.match(k) for k in state_dict]
  counts = [len({m.group(2) for m in blocks if m and m.group(1) == str(s)}) for s in range(1, 5)]
  missing = [k for k in ("conv1.weight",) if k not in state_dict]
  missing += [f"layer{s + 1}.0.conv1.weight" for s, n in enumerate(counts) if not n]
  if missing:
    raise weights.MismatchError("not a torchvision ResNet state dict", missing=missing)
  stages, width = tuple(counts), int(np.shape(state_dict["conv1.weight"])[0])
  depth = depth_of(stages)
  label = f"ResNet-{depth}" if depth else f"ResNet with stages {stages}"
  flat = names.match_state_dict(state_dict, backbone_shapes(stages, width), names.TORCHVISION,
                                f"incomplete {label} state dict", ignored_prefixes=("fc.",))
  return stages, width, flax.traverse_util.unflatten_dict(flat)
