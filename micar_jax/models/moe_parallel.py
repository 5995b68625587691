"""Batch-sharded MoE dispatches: per-shard sort/einsum, and expert parallelism.

The auxiliary losses stay in `moe.MoE` under plain jit: their means over all
tokens become cross-device reductions automatically, so they equal the
one-device values. This module runs the row-wise parts inside a
`jax.shard_map` over every data-like mesh axis ("data", "fsdp", "expert"), so
each device handles the rows of its own batch shard only (n / shards of the n
tokens; plain jit would gather all n rows onto every device for top-k and for
the sort): the router's softmax and top-k (`per_batch_shard`), and the sparse
part:

  * `data_parallel(local)`: each shard runs a one-device `LocalDispatch`
    (`moe_dispatch.sort` or `einsum`) on its rows with the full experts, their
    hidden width split over "tensor" when d_ff divides (partial outputs summed
    with psum);
  * `expert_parallel`: experts sharded over "expert", tokens exchanged with two
    all-to-alls:
      1. each shard places its own assignments into fixed-capacity buffers
         [E, C, d] (k-major priority, as `routing.capacity_positions`);
      2. an all-to-all over "expert" sends each expert's buffer to the device
         that holds that expert, which receives [ep, E/ep, C, d] from its peers;
      3. the local experts run (hidden width split over "tensor" as above);
      4. a second all-to-all returns the outputs, and each shard gathers its
         tokens' k outputs [n, k, d].
`moe.MoE` applies dropout and the combine weights outside (so the dropout mask
does not depend on the mesh).

Capacity is per batch shard in every dispatch: C = expert_capacity(local
tokens, k, E, capacity_factor), with priority k-major within each shard, so
sort, einsum and expert_parallel drop the same assignments on the same mesh,
and one device is one shard. With capacity_factor <= 0 nothing is dropped and
the result equals the one-device `MoE` exactly. Rows that do not split evenly
are padded with expert id -1 (no slot, zero output, not counted).

The mesh comes from the context: call the model under
`micar_jax.core.partitioning.use_mesh(mesh, rules)` (i.e. `jax.set_mesh(mesh)`).
`expert_parallel` needs an Auto mesh with an "expert" axis (size 1 works);
`data_parallel` runs on one device without a mesh, or with a mesh of one device.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from micar_jax import errors
from micar_jax.models import moe_dispatch, partitioning, routing

Array = jax.Array


def _context_mesh() -> jax.sharding.AbstractMesh:
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or partitioning.EXPERT_AXIS not in mesh.axis_names:
    raise ValueError("moe_impl='expert_parallel' needs a mesh with an 'expert' axis: run the "
                     "model under micar_jax.core.partitioning.use_mesh(mesh, rules)")
  return mesh


def _pad_rows(x: Array, shards: int, fill: int) -> Array:
  """[n, ...] -> [n', ...]: n' the next multiple of `shards`, the new rows `fill`."""
  pad = -x.shape[0] % shards
  if not pad:
    return x
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1), constant_values=fill)


def per_batch_shard(fn: Callable[..., Any]) -> Callable[..., Any]:
  """Runs a row-wise function of [n, ...] arrays once per batch shard.

  Under a mesh of several devices, `fn` runs inside shard_map on each shard's
  rows (zero rows pad n to a multiple of the shards); its outputs, a pytree of
  [n, ...] arrays, stay batch-sharded. Without one it is `fn`. For `fn`s whose
  rows are independent (softmax and top-k over experts): the SPMD partitioner
  would otherwise gather all rows onto every device for the TopK custom call.
  """

  def wrapped(*rows: Array) -> Any:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
      return fn(*rows)
    axes, shards = partitioning.batch_axes(mesh)
    n = rows[0].shape[0]
    out = jax.shard_map(fn, mesh=mesh, in_specs=P(axes), out_specs=P(axes), check_vma=True)(
        *(_pad_rows(r, shards, 0) for r in rows))
    return jax.tree.map(lambda a: a[:n], out)

  return wrapped


def _shard_rows(mesh: jax.sharding.AbstractMesh, tokens: Array, expert_ids: Array,
                experts: moe_dispatch.Experts, capacity_factor: float
                ) -> tuple[tuple[str, ...], str | None, Array, Array, int]:
  """How the n rows split over the mesh's batch axes.

  Args:
    mesh: the context mesh.
    tokens: [n, d]; expert_ids: [n, k].
    experts: w1 [E, d, f], w3 [E, d, f], w2 [E, f, d].
    capacity_factor: <= 0 for dropless.

  Returns:
    (batch axes, the "tensor" axis if it splits f else None, tokens [n', d] and
    expert ids [n', k] padded to a multiple n' of the shards (padding ids -1:
    they take no slot and count as nothing), the per-shard capacity
    expert_capacity(n' / shards, k, E, capacity_factor)).
  """
  batch_axes, shards = partitioning.batch_axes(mesh)
  tp = mesh.shape.get(partitioning.TENSOR_AXIS, 1)
  hidden = partitioning.TENSOR_AXIS if tp > 1 and experts[0].shape[-1] % tp == 0 else None
  tokens, expert_ids = _pad_rows(tokens, shards, 0), _pad_rows(expert_ids, shards, -1)
  n, k = expert_ids.shape
  capacity = routing.expert_capacity(n // shards, k, experts[0].shape[0], capacity_factor)
  return batch_axes, hidden, tokens, expert_ids, capacity


def _weight_specs(expert_axis: str | None, hidden: str | None) -> tuple[P, P, P]:
  """shard_map specs of w1, w3 [E, d, f] and w2 [E, f, d]."""
  return (P(expert_axis, None, hidden), P(expert_axis, None, hidden),
          P(expert_axis, hidden, None))


def data_parallel(local: moe_dispatch.LocalDispatch) -> moe_dispatch.Dispatch:
  """Runs a one-device dispatch once per batch shard of the context mesh.

  Args:
    local: computes one shard's rows with a given per-shard capacity.

  Returns:
    A `moe_dispatch.Dispatch`: without a mesh, or on a mesh of one device,
    `local` on all n rows; otherwise `local` inside shard_map on each shard's
    n / shards rows (experts replicated over the batch axes, split over
    "tensor" on their hidden width), the outputs staying batch-sharded.
  """

  @functools.wraps(local)
  def dispatch(tokens: Array, expert_ids: Array, experts: moe_dispatch.Experts,
               act: Callable[[Array], Array], capacity_factor: float) -> tuple[Array, Array]:
    n, k = expert_ids.shape
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
      capacity = routing.expert_capacity(n, k, experts[0].shape[0], capacity_factor)
      out, dropped = local(tokens, expert_ids, experts, act, capacity)
      return out, dropped / (n * k)
    batch_axes, hidden, tokens, expert_ids, capacity = _shard_rows(
        mesh, tokens, expert_ids, experts, capacity_factor)

    def per_shard(x, ids, w1, w3, w2):
      out, dropped = local(x, ids, (w1, w3, w2), act, capacity)
      if hidden is not None:  # each tensor shard holds a slice of d_ff: sum the partial outputs
        out = jax.lax.psum(out, hidden)
      return out, jax.lax.psum(dropped, batch_axes)

    rows = P(batch_axes)
    fn = jax.shard_map(per_shard, mesh=mesh,
                       in_specs=(rows, rows, *_weight_specs(None, hidden)),
                       out_specs=(rows, P()), check_vma=True)
    out, dropped = fn(tokens, expert_ids, *experts)
    return out[:n], dropped / (n * k)

  return dispatch


def expert_parallel(tokens: Array, expert_ids: Array, experts: moe_dispatch.Experts,
                    act: Callable[[Array], Array],
                    capacity_factor: float) -> tuple[Array, Array]:
  """Computes each token's routed experts with the experts sharded over "expert".

  A `moe_dispatch.Dispatch`, like `data_parallel(moe_dispatch.sort)`.

  Args:
    tokens: [n, d] (any sharding; the batch axes split it inside).
    expert_ids: [n, k] int32 chosen experts.
    experts: stacked SwiGLU weights w1 [E, d, f], w3 [E, d, f], w2 [E, f, d].
    act: the SwiGLU activation.
    capacity_factor: <= 0 for dropless, else per-shard slots
      ceil(cf · local tokens · k / E).

  Returns:
    The expert output of each assignment [n, k, d] (unweighted, zero where
    dropped), and the dropped fraction of the n·k assignments (scalar float32).

  Raises:
    ValueError: no mesh in context.
    errors.ConfigError: E not divisible by the expert axis.
  """
  mesh = _context_mesh()
  num_experts = experts[0].shape[0]
  ep = mesh.shape[partitioning.EXPERT_AXIS]
  if num_experts % ep:
    raise errors.ConfigError(f"num_experts={num_experts} does not split over the mesh's "
                             f"expert axis of size {ep}")
  n, k = expert_ids.shape
  batch_axes, hidden, tokens, expert_ids, capacity = _shard_rows(
      mesh, tokens, expert_ids, experts, capacity_factor)

  def local(x, ids, w1, w3, w2):
    out, dropped = _dispatch_compute_return(x, ids, (w1, w3, w2), act, capacity, hidden)
    return out, jax.lax.psum(dropped, batch_axes)

  rows = P(batch_axes)
  fn = jax.shard_map(
      local, mesh=mesh,
      in_specs=(rows, rows, *_weight_specs(partitioning.EXPERT_AXIS, hidden)),
      out_specs=(rows, P()), check_vma=True)
  out, dropped = fn(tokens, expert_ids, *experts)
  return out[:n], dropped / (n * k)


def _dispatch_compute_return(x, ids, ws, act, capacity, hidden):
  """One shard: [n, d] tokens -> ([n, k, d] outputs, number of dropped assignments)."""
  n, k = ids.shape
  d = x.shape[-1]
  e_local = ws[0].shape[0]
  ep = jax.lax.axis_size(partitioning.EXPERT_AXIS)
  num_experts = e_local * ep
  slot = routing.capacity_positions(ids, num_experts)
  real = ids >= 0
  keep = real & (slot < capacity)
  # Row of each assignment in the flat [E·C] buffer; dropped ones point past the end.
  dest = jnp.where(keep, ids * capacity + slot, num_experts * capacity).reshape(-1)
  rows = jnp.broadcast_to(x[:, None, :], (n, k, d)).reshape(n * k, d)
  buf = jnp.zeros((num_experts * capacity, d), x.dtype).at[dest].add(rows, mode="drop")

  # Shape: [ep (destination), E/ep · C, d] -> [ep (source), E/ep · C, d].
  buf = jax.lax.all_to_all(buf.reshape(ep, e_local * capacity, d), partitioning.EXPERT_AXIS,
                           0, 0, tiled=True)
  buf = buf.reshape(ep, e_local, capacity, d).swapaxes(0, 1).reshape(e_local, ep * capacity, d)
  out = moe_dispatch.swiglu_experts(buf, *ws, act, moe_dispatch.expert_matmul)  # [E/ep, ep·C, d]
  if hidden is not None:
    out = jax.lax.psum(out, hidden)
  out = out.reshape(e_local, ep, capacity, d).swapaxes(0, 1).reshape(ep, e_local * capacity, d)
  out = jax.lax.all_to_all(out, partitioning.EXPERT_AXIS, 0, 0, tiled=True)
  out = out.reshape(num_experts * capacity, d)

  picked = out.at[dest].get(mode="fill", fill_value=0).reshape(n, k, d)
  return picked, jnp.sum(real & ~keep).astype(jnp.float32)
