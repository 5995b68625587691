"""Device mesh, logical axis rules, and sharded state creation and input assembly.

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
`nn.with_logical_constraint`.
"""

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")
# Mesh axes that split the batch, outermost first.
BATCH_AXES = ("data", "fsdp", "expert")
EXPERT_AXIS = "expert"
TENSOR_AXIS = "tensor"

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Axis sizes from config.mesh.{data,fsdp,expert,tensor}, with one -1 filled.

  Raises:
    ValueError: sizes are not positive (or -1), several are -1, or their
      product is not the device count.
  """
  sizes = [int(config.mesh[name]) for name in MESH_AXES]
  listing = ", ".join(f"{n}={s}" for n, s in zip(MESH_AXES, sizes))
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise ValueError(f"config.mesh ({listing}): sizes must be positive, one of them may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"config.mesh ({listing}) does not divide {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh ({listing}) needs {math.prod(sizes)} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes)


def make_mesh(config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ("data", "fsdp", "expert", "tensor") mesh with Auto axes.

  Args:
    config: the run config (reads config.mesh).
    devices: devices to lay out (default: all of them, every process).

  Raises:
    ValueError: the sizes do not fit the device count or the physical torus (one line).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(config, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except NotImplementedError:
    # jax lays a TPU mesh out only when each axis is a product of physical torus axes
    # (8 is none of a 16x16 v6e-256); say so in one line rather than a traceback.
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, shape))} does not map onto the "
                     f"devices' physical torus: each mesh axis must be a product of "
                     f"physical axis sizes (micar_jax.plan --search lists meshes that do)"
                     ) from None


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


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
  """Makes `mesh` the current mesh and `rules` the logical axis rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


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
    pad: append zero rows (valid=False) until the global batch splits over the
      batch shards; for evaluation and prediction, whose callers read back only
      the rows they sent. Training batches are never padded (BatchNorm would
      see the zero rows).

  Returns:
    {name: [rows * process_count, ...]} sharded by `batch_sharding(mesh)`.

  Raises:
    ValueError: pad=False and the global batch does not split over the batch shards.
  """
  sharding = batch_sharding(mesh)
  shards = batch_shards(mesh)
  # Local rows must be a multiple of this for the global rows to split over the shards.
  multiple = math.lcm(shards, jax.process_count()) // jax.process_count()
  out = {}
  for name, local in local_batch.items():
    if pad and local.shape[0] % multiple:
      extra = multiple - local.shape[0] % multiple
      local = np.concatenate([local, np.zeros((extra,) + local.shape[1:], local.dtype)])
    rows = local.shape[0] * jax.process_count()
    if rows % shards:
      raise ValueError(f"batch {name!r} of {rows} rows does not split over {shards} batch "
                       "shards (mesh data x fsdp x expert); use a batch size divisible by it")
    out[name] = jax.make_array_from_process_local_data(sharding, local)
  return out
