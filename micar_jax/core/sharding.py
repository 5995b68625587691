"""The device mesh, sharded state creation and global input assembly.

Which mesh axis each logical array axis uses is the model's own declaration
(micar_jax/models/partitioning.py); this module lays the devices out as that
mesh, turns the declaration into NamedShardings, creates state already sharded
and assembles each process's rows into global batches.
"""

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from micar_jax import errors
from micar_jax.data import batch_spec
from micar_jax.models.partitioning import (
  BATCH_AXES,
  MESH_AXES,
  LogicalRules,
  resolve_spec,
  use_mesh,
)


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Axis sizes from config.mesh.{data,fsdp,expert,tensor}, with one -1 filled.

  Raises:
    errors.ConfigError: sizes are not positive (or -1), several are -1, or their
      product is not the device count.
  """
  sizes = [int(config.mesh[name]) for name in MESH_AXES]
  listing = ", ".join(f"{n}={s}" for n, s in zip(MESH_AXES, sizes))
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise errors.ConfigError(
        f"config.mesh ({listing}): sizes must be positive, one of them may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise errors.ConfigError(f"config.mesh ({listing}) does not divide {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise errors.ConfigError(f"config.mesh ({listing}) needs {math.prod(sizes)} devices, "
                            f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ("data", "fsdp", "expert", "tensor") mesh with Auto axes.

  Args:
    config: the run config (reads config.mesh).
    devices: devices to lay out (default: all of them, every process).

  Raises:
    errors.ConfigError: the sizes do not fit the device count or the physical torus (one line).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(config, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except NotImplementedError:
    # jax lays a TPU mesh out only when each axis is a product of physical torus axes
    # (8 is none of a 16x16 v6e-256); say so in one line rather than a traceback.
    raise errors.ConfigError(f"config.mesh {dict(zip(MESH_AXES, shape))} does not map onto the "
                     f"devices' physical torus: each mesh axis must be a product of "
                     f"physical axis sizes (micar_jax.plan --search lists meshes that do)"
                     ) from None


def unbox(tree: Any) -> Any:
  """Strips logical-partitioning boxes without sharding constraints.

  `nn.meta.unbox` constrains each leaf to flax's own resolution of its names
  when a mesh is set, which ignores divisibility (and fails on
  ShapeDtypeStructs); the shardings here come from `state_shardings` instead.
  """
  return nn.meta.map_axis_meta(lambda box: unbox(box.unbox(apply_constraint=False)), tree)


def state_shardings(abstract_tree: Any, mesh: Mesh, rules: LogicalRules) -> Any:
  """NamedShardings for a tree whose leaves may be logical-partitioning boxes.

  Args:
    abstract_tree: e.g. `jax.eval_shape(init_fn, rng)`; boxed leaves carry
      logical names, plain leaves (step counters) are replicated.
    mesh: the mesh.
    rules: logical axis rules.

  Returns:
    A tree of NamedSharding with the structure of the *unboxed* tree.
  """
  specs = nn.get_partition_spec(abstract_tree)
  shapes = unbox(abstract_tree)

  def one(spec: PartitionSpec, leaf: Any) -> Any:
    if not hasattr(leaf, "shape"):
      # optax.partition masks other groups' leaves with an empty MaskedNode.
      return leaf
    return NamedSharding(mesh, resolve_spec(tuple(spec), leaf.shape, rules, mesh))

  return jax.tree.map(one, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension over every data-like mesh axis."""
  return NamedSharding(mesh, PartitionSpec(tuple(a for a in BATCH_AXES if a in mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def abstract_sharded(init_fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules,
                     *args: Any) -> Any:
  """Unboxed ShapeDtypeStructs (with shardings) of `init_fn(*args)`: a restore target."""
  with use_mesh(mesh, rules):
    abstract = jax.eval_shape(init_fn, *args)
  shardings = state_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      unbox(abstract), shardings)


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules,
                 *args: Any) -> tuple[Any, Any]:
  """Runs `init_fn` under jit so that every leaf is created already sharded.

  Args:
    init_fn: (*args) -> tree with logical-partitioning boxes (parameters and
      anything built from them inside, e.g. the optimizer state).
    mesh: the mesh.
    rules: logical axis rules.
    *args: init_fn's arguments (e.g. an rng key).

  Returns:
    (unboxed state, its tree of NamedSharding), the latter for jit in/out shardings.
  """
  with use_mesh(mesh, rules):
    abstract = jax.eval_shape(init_fn, *args)
    shardings = state_shardings(abstract, mesh, rules)
    state = jax.jit(lambda *a: unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return state, shardings


def batch_shards(mesh: Mesh) -> int:
  """How many pieces the batch is split into: data x fsdp x expert."""
  return math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names)


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh,
                 pad: bool = False) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays split over the batch axes.

  Args:
    local_batch: this process's rows, {name: [local_batch, ...]}.
    mesh: the mesh.
    pad: append zero rows (valid=False; `batch_spec.pad_rows`) until the global
      batch splits over the batch shards; for evaluation and prediction, whose
      callers read back only the rows they sent. Training batches are never
      padded (BatchNorm would see the zero rows).

  Returns:
    {name: [rows * process_count, ...]} sharded by `batch_sharding(mesh)`.

  Raises:
    errors.ConfigError: pad=False and the global batch does not split over the batch shards.
  """
  sharding = batch_sharding(mesh)
  shards = batch_shards(mesh)
  if pad:
    local_batch = batch_spec.pad_rows(local_batch, shards, jax.process_count())
  out = {}
  for name, local in local_batch.items():
    rows = local.shape[0] * jax.process_count()
    problem = batch_spec.split_problem(rows, shards, f"batch {name!r} of {rows} rows")
    if problem:
      raise errors.ConfigError(problem)
    out[name] = jax.make_array_from_process_local_data(sharding, local)
  return out
