"""Expert-parallel dispatch of routed tokens: shard_map + two all-to-alls.

Routing and the auxiliary losses stay in `moe.MoE` under plain jit: their
means over all tokens become cross-device reductions automatically, so they
equal the one-device values. This module does only the sparse part:

  1. tokens [n, d] are split over every data-like mesh axis ("data", "fsdp",
     "expert"); each shard places its own assignments into fixed-capacity
     buffers [E, C, d] (k-major priority, as `routing.capacity_positions`);
  2. an all-to-all over "expert" sends each expert's buffer to the device that
     holds that expert, which receives [ep, E/ep, C, d] from its peers;
  3. the local experts run (their hidden width split over "tensor" and the
     partial outputs summed with psum, when d_ff divides);
  4. a second all-to-all returns the outputs, and each shard gathers its
     tokens' k outputs [n, k, d]; `moe.MoE` applies dropout and the combine
     weights outside (so the dropout mask does not depend on the mesh).

Capacity is per shard: C = expert_capacity(local tokens, k, E, capacity_factor),
so with capacity_factor <= 0 nothing is dropped and the result equals the
one-device `MoE` exactly; with drops, priority is k-major within each shard.

The mesh comes from the context: call the model under
`micar_jax.core.partitioning.use_mesh(mesh, rules)` (i.e. `jax.set_mesh(mesh)`), on an
Auto mesh that has an "expert" axis (size 1 works: one device or pure data
parallelism).
"""

import math
from typing import Callable

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


def expert_parallel(tokens: Array, expert_ids: Array, experts: moe_dispatch.Experts,
                    act: Callable[[Array], Array],
                    capacity_factor: float) -> tuple[Array, Array]:
  """Computes each token's routed experts with the experts sharded over "expert".

  A `moe_dispatch.Dispatch`, like the one-device `sort` and `einsum`.

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
  batch_axes = tuple(a for a in partitioning.BATCH_AXES if a in mesh.axis_names)
  shards = math.prod(mesh.shape[a] for a in batch_axes)
  tp = mesh.shape.get(partitioning.TENSOR_AXIS, 1)
  hidden = partitioning.TENSOR_AXIS if tp > 1 and experts[0].shape[-1] % tp == 0 else None

  n, k = expert_ids.shape
  pad = -n % shards
  if pad:
    # Padding rows route to expert -1: they take no slot and count as nothing.
    tokens = jnp.pad(tokens, ((0, pad), (0, 0)))
    expert_ids = jnp.pad(expert_ids, ((0, pad), (0, 0)), constant_values=-1)
  capacity = routing.expert_capacity((n + pad) // shards, k, num_experts, capacity_factor)

  def local(x, ids, w1, w3, w2):
    out, dropped = _dispatch_compute_return(x, ids, (w1, w3, w2), act, capacity, hidden)
    return out, jax.lax.psum(dropped, batch_axes)

  rows = P(batch_axes)
  fn = jax.shard_map(
      local, mesh=mesh,
      in_specs=(rows, rows, P(partitioning.EXPERT_AXIS, None, hidden),
                P(partitioning.EXPERT_AXIS, None, hidden), P(partitioning.EXPERT_AXIS, hidden, None)),
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
