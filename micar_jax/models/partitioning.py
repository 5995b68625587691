"""Logical axis names of the model's arrays and the rules that map them to mesh axes.

The mesh has four Auto axes ("data", "fsdp", "expert", "tensor"). Every
data-like axis carries the batch (MaxText style): batches are split over
("data", "fsdp", "expert"), and replicated over "tensor". Parameters are
annotated with logical axis names (micar_jax/models/layers.py) that
`logical_rules` maps to mesh axes:

  * "fsdp" shards the large weights: d_model (embed), the attention bottleneck
    (latent), the vision width and conv input channels (the 2048-channel FPN
    and fusion convs, the ResNet);
  * "expert" shards the stacked expert weights on their leading axis;
  * "tensor" shards mlp, heads and vocab.

A dimension that its mesh axes do not divide stays replicated (RMSNorm
vectors, V=229, the 3 input channels of the stem), so any model fits any mesh.

Everything that traces the model runs under `use_mesh(mesh, rules)`: that
context makes the mesh visible to the expert-parallel MoE
(`jax.sharding.get_abstract_mesh()`) and the rules to
`nn.with_logical_constraint`. The model declares its layout here; the mesh
itself and sharded state are made in micar_jax/core/sharding.py.
"""

import contextlib
import math
from typing import Any, Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")
# Mesh axes that split the batch, outermost first.
BATCH_AXES = ("data", "fsdp", "expert")
EXPERT_AXIS = "expert"
TENSOR_AXIS = "tensor"

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def logical_rules() -> LogicalRules:
  """Logical-axis -> mesh-axis rules, in flax's priority order.

  Rules are tried in order and a mesh axis is used at most once per array, so
  the expert kernels [E, D, F] resolve to ("expert", "fsdp", "tensor") and the
  fusion conv [3, 3, C_in, d_v] to (None, None, "fsdp", None). "batch" is the
  one activation name (`constrain`); every other name is a parameter axis.
  """
  return (
      # Activations.
      ("batch", BATCH_AXES),
      # Parameters.
      ("expert", EXPERT_AXIS),
      ("vocab", TENSOR_AXIS),
      ("mlp", TENSOR_AXIS),
      ("heads", TENSOR_AXIS),
      ("embed", "fsdp"),
      ("latent", "fsdp"),
      ("conv_in", "fsdp"),
      ("vision_embed", "fsdp"),
      ("conv_out", "fsdp"),
  )


def _as_tuple(axes: str | tuple[str, ...] | None) -> tuple[str, ...]:
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def resolve_spec(names: Sequence[str | None], shape: Sequence[int], rules: LogicalRules,
                 mesh: Mesh) -> PartitionSpec:
  """Flax's rule resolution, restricted to mesh axes that divide the dimension.

  A rule whose mesh axes do not divide the dimension is retried without its
  trailing axes, then skipped (so a later rule or replication applies).

  Args:
    names: logical name (or None) of each dimension.
    shape: the array's shape.
    rules: (logical name, mesh axes) pairs, highest priority first.
    mesh: the mesh whose axis sizes decide divisibility.

  Returns:
    A PartitionSpec that uses each mesh axis at most once.
  """
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  result: list[Any] = [None] * len(names)
  decided = [name is None for name in names]
  used: set[str] = set()
  for logical, mesh_axes in rules:
    if logical not in names:
      continue
    pos = list(names).index(logical)
    if decided[pos]:
      continue
    if mesh_axes is None:  # An explicit "replicate" rule wins over later ones.
      decided[pos] = True
      continue
    axes = tuple(a for a in _as_tuple(mesh_axes) if a in sizes)
    for n in range(len(axes), 0, -1):
      head = axes[:n]
      if used.isdisjoint(head) and shape[pos] % math.prod(sizes[a] for a in head) == 0:
        result[pos] = head[0] if n == 1 else head
        used.update(head)
        decided[pos] = True
        break
  return PartitionSpec(*result)


def batch_axes(mesh: jax.sharding.AbstractMesh | Mesh) -> tuple[tuple[str, ...], int]:
  """The mesh's axes that split the batch (outermost first) and how many shards they make."""
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
  return axes, math.prod(mesh.shape[a] for a in axes)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op without a mesh.

  Resolved like the parameters (`resolve_spec`: an axis that does not divide
  the dimension is left out), so any batch size works on any mesh, e.g. a
  decode batch of 1. Uses the mesh and rules of the enclosing `use_mesh`.

  Args:
    x: the activation.
    names: logical name (or None) of each dimension, e.g. ("batch", None, None, None).
  """
  mesh = jax.sharding.get_abstract_mesh()
  rules = nn.get_logical_axis_rules()
  if mesh.empty or not rules:
    return x
  return jax.lax.with_sharding_constraint(x, resolve_spec(names, x.shape, rules, mesh))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Makes `mesh` the current mesh and `rules` the logical axis rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield
