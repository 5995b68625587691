"""The folders `python -m micar_jax.convert` writes, and their loading into a run's variables.

A converted folder holds one Orbax (StandardCheckpointer) checkpoint of
{"params", "batch_stats"} in a subfolder plus small JSON/vocabulary files:

  torchvision-resnet:  DIR/backbone/   DIR/resnet.json   (depth, stage_sizes, width)
  official:            DIR/variables/  DIR/token2id.json  DIR/conversion.json

Loading checks names and shapes against the model of the run's config first,
so a folder of another config is one error listing every difference. Names are
compared in the unscanned ResNet layout, and a folder restores in the layout it
was written in, then takes the model's (`models.block_layout`): folders
written with or without `model.scan_blocks` load into either model.
"""

import json
import os
from typing import Any, Sequence

import flax.traverse_util
import jax
import orbax.checkpoint as ocp

from micar_jax import errors
from micar_jax.models import block_layout

BACKBONE_DIR = "backbone"
RESNET_JSON = "resnet.json"
MODEL_DIR = "variables"
# torchvision's download of ResNet101_Weights.IMAGENET1K_V2 (the reference's start).
TORCHVISION_RESNET101_FILE = "resnet101-cd907fc2.pth"


def absolute(path: str) -> str:
  """`path` with `~` expanded, made absolute: Orbax refuses relative checkpoint paths."""
  return os.path.abspath(os.path.expanduser(path))


def first_line(e: BaseException) -> str:
  """The first line of an exception's message (its type name if empty)."""
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


class MismatchError(errors.UserError):
  """A state dict or checkpoint that does not fit the model, with every problem by name.

  Attributes:
    missing: names the model needs that the source lacks.
    unexpected: names in the source that the model has no place for.
    wrong: "name: got ... expected ..." for shape (or constant value) mismatches.
  """

  def __init__(self, what: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
               wrong: Sequence[str] = ()):
    self.missing, self.unexpected, self.wrong = list(missing), list(unexpected), list(wrong)
    parts = [f"{len(items)} {label}: {_listing(items)}"
             for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                                  ("wrong", self.wrong)) if items]
    super().__init__(f"{what}: " + "; ".join(parts))


def _listing(items: Sequence[str], limit: int = 8) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  flat = flax.traverse_util.flatten_dict(tree, sep="/")
  return {k: tuple(v.shape) for k, v in flat.items()}


def _restore_checked(path: str, target: dict[str, Any], what: str) -> dict[str, Any]:
  """Restores `path` into target's shapes/dtypes/shardings after comparing names and shapes."""
  path = absolute(path)
  if not os.path.isdir(path):
    raise errors.UserError(f"{os.path.dirname(path)} is not a converted folder ({path} is missing)")
  try:
    stored_tree = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
  except Exception as e:  # pylint: disable=broad-except
    raise errors.UserError(f"{path} is not an Orbax checkpoint ({first_line(e)})") from None
  stored = _flat_shapes(block_layout.unstack(stored_tree))
  wanted = _flat_shapes(block_layout.unstack(target))
  wrong = [f"{k} {stored[k]} expected {wanted[k]}" for k in wanted
           if k in stored and stored[k] != wanted[k]]
  missing = [k for k in wanted if k not in stored]
  unexpected = [k for k in stored if k not in wanted]
  if missing or unexpected or wrong:
    raise MismatchError(what, missing, unexpected, wrong)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = ocp.StandardCheckpointer().restore(path, block_layout.relayout(abstract, stored_tree))
  return block_layout.relayout_placed(restored, abstract)


def check_vision_init(directory: str) -> None:
  """Fails fast (before any compile) unless `directory` holds converted ResNet weights.

  Raises:
    errors.UserError: no such folder (naming the convert command), or not one the
      converter wrote.
  """
  if not os.path.isdir(absolute(directory)):
    raise errors.UserError(
        f"model.vision_init_from={directory}: no converted ResNet weights there; convert "
        f"torchvision's ImageNet ones with `python -m micar_jax.convert torchvision-resnet "
        f"--weights={TORCHVISION_RESNET101_FILE} --out={directory}`, or train from scratch with "
        "--config.model.vision_init_from=scratch")
  _check_converted(directory, BACKBONE_DIR, "model.vision_init_from", "torchvision-resnet")


def check_model_init(directory: str) -> None:
  """Fails fast (before any compile) unless `directory` holds a converted model.

  Raises:
    errors.UserError: no such folder, a run folder, or not one the converter wrote.
  """
  if not os.path.isdir(absolute(directory)):
    raise errors.UserError(f"init_from={directory}: no such folder; give the --out folder of "
                           "`python -m micar_jax.convert official`")
  if os.path.isdir(os.path.join(absolute(directory), "checkpoints")):
    raise errors.UserError(
        f"init_from={directory} is a run folder, not a converted model: to continue that run "
        f"use --workdir={directory}; init_from takes the --out folder of "
        "`python -m micar_jax.convert official`")
  _check_converted(directory, MODEL_DIR, "init_from", "official")


def _check_converted(directory: str, subdir: str, key: str, command: str) -> None:
  if not os.path.isdir(os.path.join(absolute(directory), subdir)):
    raise errors.UserError(
        f"{key}={directory} is not a converted folder ({subdir}/ is missing); write one with "
        f"`python -m micar_jax.convert {command}`")


def load_vision_init(directory: str, variables: dict[str, Any]) -> dict[str, Any]:
  """Replaces the ResNet backbone of `variables` by converted torchvision weights.

  Args:
    directory: written by `python -m micar_jax.convert torchvision-resnet`.
    variables: {"params", "batch_stats"} of the model (arrays or abstract shapes);
      their vis_enc/backbone subtrees fix the expected names, shapes and shardings.

  Returns:
    variables with vis_enc/backbone params and batch_stats from the checkpoint.

  Raises:
    errors.UserError: no such folder (naming the convert command), not a
      converted folder, or names/shapes differ (listed by name).
  """
  check_vision_init(directory)
  directory = absolute(directory)
  info_path = os.path.join(directory, RESNET_JSON)
  info = {}
  if os.path.isfile(info_path):
    with open(info_path) as f:
      info = json.load(f)
  target = {c: variables[c]["vis_enc"]["backbone"] for c in ("params", "batch_stats")}
  label = f"ResNet-{info['depth']}" if info.get("depth") else f"stages {info.get('stage_sizes')}"
  restored = _restore_checked(
      os.path.join(directory, BACKBONE_DIR), target,
      f"{directory} ({label}, width {info.get('width')}) does not fit config.model "
      "(resnet_depth / resnet_stages / resnet_width)")
  out = dict(variables)
  for c in ("params", "batch_stats"):
    vis_enc = dict(variables[c]["vis_enc"], backbone=restored[c])
    out[c] = dict(variables[c], vis_enc=vis_enc)
  return out


def load_model_init(directory: str, abstract_variables: dict[str, Any]) -> dict[str, Any]:
  """Loads a converted model (`python -m micar_jax.convert official`).

  Args:
    directory: the converter's --out folder.
    abstract_variables: {"params", "batch_stats"} shapes (and shardings) of the
      model built from the run's config (arrays are accepted too).

  Returns:
    The restored variables in that structure.

  Raises:
    errors.UserError: not a converted folder, or names/shapes differ (listed by name).
  """
  check_model_init(directory)
  directory = absolute(directory)
  return _restore_checked(os.path.join(directory, MODEL_DIR), abstract_variables,
                          f"converted model {directory} does not fit this config")
