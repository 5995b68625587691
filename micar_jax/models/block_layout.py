"""The ResNet's two variable layouts and exact conversions between them.

Unscanned, every bottleneck block has its own subtree `stage{s}_block{b}`.
Scanned (`model.scan_blocks`, see `resnet`), blocks 1..n-1 of a stage of n >= 3
blocks share one subtree `stage{s}_blocks` whose leaves are the blocks' leaves
stacked on a new leading axis of n-1 (index i = block i+1); block 0 keeps its
name. E.g. ResNet-101's stage 3:

  unscanned   stage3_block1/conv1/kernel [1, 1, 1024, 256] ... stage3_block22/...
  scanned     stage3_blocks/conv1/kernel [22, 1, 1, 1024, 256]

The per-block layout is the canonical one: converters name blocks one by one
in it, and checkpoints or converted folders may hold either. The conversions
go by names only, so they apply anywhere in a tree: a {params, batch_stats}
dict, a TrainState (whose optimizer moments mirror params), or abstract trees
(ShapeDtypeStruct and Orbax metadata leaves, for restore targets). Leaves are
moved, never computed on: np.stack / indexing, bit-exact both ways.
"""

import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from micar_jax.models import resnet
from micar_jax.models.model_config import ModelConfig

_BLOCK = re.compile(r"stage(\d+)_block(\d+)$")
_SCANNED = re.compile(r"stage(\d+)_blocks$")


def scanned_stages(mc: ModelConfig) -> frozenset[int]:
  """The stages (counting from 1) whose blocks 1..n-1 the model of `mc` scans."""
  return frozenset(s + 1 for s, n in enumerate(mc.stage_sizes)
                   if resnet.scanned(n, mc.scan_blocks))


def stack(variables: Any, mc: ModelConfig) -> Any:
  """Unscanned variables (or any tree holding them) -> the layout of the model of `mc`."""
  return stack_tree(variables, scanned_stages(mc))


def unstack(variables: Any, mc: ModelConfig | None = None) -> Any:
  """Variables of either layout -> the unscanned one (`mc` is not needed: names say it)."""
  del mc
  return unstack_tree(variables)


def stages_of(tree: Any) -> frozenset[int]:
  """The stages that are stacked somewhere in `tree` (its layout, as `stack_tree` takes it)."""
  found: set[int] = set()

  def visit(d: Mapping[str, Any]) -> Mapping[str, Any]:
    found.update(int(m.group(1)) for m in map(_SCANNED.match, d) if m)
    return d

  _map_dicts(visit, tree)
  return frozenset(found)


def relayout(tree: Any, like: Any) -> Any:
  """`tree` in the layout of `like` (a tree of either layout, e.g. a restore target)."""
  wanted = stages_of(like)
  if stages_of(tree) == wanted:
    return tree
  return stack_tree(unstack_tree(tree), wanted)


def relayout_placed(tree: Any, like: Any) -> Any:
  """`relayout(tree, like)` with each leaf on the sharding of `like`'s (abstract target) leaf.

  Used after a restore in a checkpoint's own layout: the stacking runs as one
  jitted program, so it works on arrays spread over several processes too.
  """
  if stages_of(tree) == stages_of(like):
    return tree
  shardings = jax.tree.map(lambda a: getattr(a, "sharding", None), like)
  if any(s is None for s in jax.tree.leaves(shardings, is_leaf=lambda s: s is None)):
    return relayout(tree, like)
  return jax.jit(lambda t: relayout(t, like), out_shardings=shardings)(tree)


def stack_tree(tree: Any, stages: frozenset[int] | set[int]) -> Any:
  """Stacks `stage{s}_block1..` into `stage{s}_blocks` for each s in `stages`, at any depth.

  Groups already stacked, other stages and trees without blocks pass unchanged.
  """
  def one(d: Mapping[str, Any]) -> Mapping[str, Any]:
    blocks: dict[int, dict[int, str]] = {}
    for key in d:
      m = _BLOCK.match(key)
      if m and int(m.group(1)) in stages and int(m.group(2)) >= 1:
        blocks.setdefault(int(m.group(1)), {})[int(m.group(2))] = key
    if not blocks:
      return d
    out = {k: v for k, v in d.items() if not any(k in b.values() for b in blocks.values())}
    for stage, keys in sorted(blocks.items()):
      if sorted(keys) != list(range(1, len(keys) + 1)):
        raise ValueError(f"stage {stage} has blocks {sorted(keys)}: expected 1..{len(keys)}")
      parts = [d[keys[b]] for b in sorted(keys)]
      out[resnet.scan_name(stage)] = jax.tree.map(lambda *xs: _stack_leaves(xs), *parts)
    return _like(d, out)

  return _map_dicts(one, tree)


def unstack_tree(tree: Any) -> Any:
  """Splits every `stage{s}_blocks` into `stage{s}_block1..n-1` (the canonical layout).

  The block count is the leading axis of the group's leaves; a group without
  array leaves (an optimizer's masked-out moments) takes the count of the same
  stage elsewhere in `tree`.
  """
  counts = _counts(tree)

  def one(d: Mapping[str, Any]) -> Mapping[str, Any]:
    if not any(_SCANNED.match(k) for k in d):
      return d
    out = {}
    for key, value in d.items():
      m = _SCANNED.match(key)
      if not m:
        out[key] = value
        continue
      stage = int(m.group(1))
      for i in range(counts[stage]):
        out[resnet.block_name(stage, i + 1)] = jax.tree.map(
            lambda x, i=i: _take(x, i), value)
    # Blocks in order after block 0, as the unscanned model lists them.
    return _like(d, dict(sorted(out.items(), key=lambda kv: _order(kv[0]))))

  return _map_dicts(one, tree)


def _counts(tree: Any) -> dict[int, int]:
  """Stage -> stacked block count, read off the leading axis of a stacked leaf."""
  counts: dict[int, int] = {}

  def visit(d: Mapping[str, Any]) -> Mapping[str, Any]:
    for key, value in d.items():
      m = _SCANNED.match(key)
      leaves = [x for x in jax.tree.leaves(value) if hasattr(x, "shape")] if m else []
      if leaves:
        counts[int(m.group(1))] = int(leaves[0].shape[0])
    return d

  _map_dicts(visit, tree)
  return counts


def _order(key: str) -> tuple:
  """Sort key that keeps non-block names first in place and orders blocks numerically."""
  m = _BLOCK.match(key)
  return (int(m.group(1)), int(m.group(2))) if m else (0, -1)


def _map_dicts(fn: Callable[[Mapping[str, Any]], Mapping[str, Any]], tree: Any) -> Any:
  """Applies `fn` bottom-up to every string-keyed dict of `tree` (through any pytree node)."""
  if isinstance(tree, Mapping):
    return fn(_like(tree, {k: _map_dicts(fn, v) for k, v in tree.items()}))
  is_dict = lambda x: isinstance(x, Mapping) and x is not tree
  return jax.tree.map(lambda x: _map_dicts(fn, x) if isinstance(x, Mapping) else x, tree,
                      is_leaf=is_dict)


def _like(original: Mapping[str, Any], items: dict[str, Any]) -> Mapping[str, Any]:
  """`items` as the mapping type of `original` (a dict or a flax FrozenDict)."""
  return items if type(original) is dict else type(original)(items)


def _stack_leaves(xs: tuple[Any, ...]) -> Any:
  """[n] leaves of one shape -> one leaf [n, ...] of the same kind."""
  x = xs[0]
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(xs), *x.shape), x.dtype, sharding=_sharding(x, lead=True))
  if isinstance(x, jax.Array):
    return jnp.stack(xs)
  if isinstance(x, np.ndarray | np.generic):
    return np.stack(xs)
  # Orbax metadata (shape and dtype only) becomes the abstract leaf it describes.
  return jax.ShapeDtypeStruct((len(xs), *x.shape), x.dtype)


def _take(x: Any, i: int) -> Any:
  """Block i of a stacked leaf [n, ...] -> [...]."""
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=_sharding(x, lead=False))
  if isinstance(x, jax.Array | np.ndarray):
    return x[i]
  return jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype)


def _sharding(x: jax.ShapeDtypeStruct, lead: bool) -> Any:
  """x's NamedSharding with a replicated leading axis added (lead) or its leading axis dropped.

  The stacked axis is never sharded (its logical name is None), so dropping it
  loses nothing. Other shardings (a single device) carry over as they are.
  """
  s = x.sharding
  if not isinstance(s, NamedSharding):
    return s
  spec = tuple(s.spec)
  spec = (None, *spec) if lead else spec[1:]
  return NamedSharding(s.mesh, PartitionSpec(*spec))
