"""Per-shard dispatches of routed tokens to stacked SwiGLU experts.

Every `moe.MoE` dispatch has the `Dispatch` signature

  (tokens [n, d], expert_ids [n, k], (w1, w3, w2), act, capacity_factor)
      -> (outputs [n, k, d], dropped fraction of the n·k assignments)

and returns each assignment's unweighted expert output, zero where the
assignment was dropped; `moe.MoE` applies dropout and the combine weights.

The two here are `LocalDispatch`es: they compute the tokens of one batch shard
with a slot count already fixed, and return the number of dropped
assignments. `moe_parallel.data_parallel` turns them into `Dispatch`es that run
once per batch shard of the mesh (or once, on one device):

  * `sort`: assignments sorted by expert, experts applied with
    `jax.lax.ragged_dot` on the grouped rows (dropless, or capacity-limited);
  * `einsum`: fixed-capacity dispatch/combine tensors (GShard style).

An expert id < 0 marks a padding row (added to make the rows split evenly over
the shards): it takes no slot, gets a zero output and is not counted.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from micar_jax.models import routing

Array = jax.Array
Experts = tuple[Array, Array, Array]
Dispatch = Callable[[Array, Array, Experts, Callable[[Array], Array], float],
                    tuple[Array, Array]]
# (tokens [n, d], expert_ids [n, k], experts, act, capacity slots per expert)
#   -> (outputs [n, k, d], number of dropped assignments as a float32 scalar).
LocalDispatch = Callable[[Array, Array, Experts, Callable[[Array], Array], int],
                         tuple[Array, Array]]


def swiglu_experts(x: Array, w1: Array, w3: Array, w2: Array, act: Callable[[Array], Array],
                   matmul: Callable[[Array, Array], Array]) -> Array:
  """Applies stacked SwiGLU experts with a caller-supplied grouped matmul."""
  h = act(matmul(x, w1)) * matmul(x, w3)
  return matmul(h, w2)


def expert_matmul(x: Array, w: Array) -> Array:
  """Per-expert matmul of equal-sized groups: [E, C, i] x [E, i, o] -> [E, C, o]."""
  return jnp.einsum("eci,eio->eco", x, w)


def kept(expert_ids: Array, num_experts: int, capacity: int) -> tuple[Array, Array]:
  """(keep [n, k] bool, number of dropped real assignments) under `capacity` slots."""
  real = expert_ids >= 0
  if capacity >= expert_ids.shape[0]:
    # Dropless: an expert gets at most one assignment per token (top-k ids are distinct).
    return real, jnp.zeros((), jnp.float32)
  keep = real & (routing.capacity_positions(expert_ids, num_experts) < capacity)
  return keep, jnp.sum(real & ~keep).astype(jnp.float32)


def sort(tokens: Array, expert_ids: Array, experts: Experts, act: Callable[[Array], Array],
         capacity: int) -> tuple[Array, Array]:
  """Sort assignments by expert, grouped matmuls, unsort (a `LocalDispatch`)."""
  n, k = expert_ids.shape
  num_experts = experts[0].shape[0]
  keep, dropped = kept(expert_ids, num_experts, capacity)
  # Padding rows join the last group: computed like any row, then zeroed by `keep`.
  flat_ids = jnp.where(expert_ids >= 0, expert_ids, num_experts - 1).reshape(-1)
  order = jnp.argsort(flat_ids, stable=True)
  rows = tokens[order // k]  # [n·k, d] grouped by expert
  group_sizes = jnp.bincount(flat_ids, length=num_experts).astype(jnp.int32)
  ragged = lambda lhs, rhs: jax.lax.ragged_dot(lhs, rhs, group_sizes)
  out = swiglu_experts(rows, *experts, act, ragged)
  out = jnp.zeros_like(out).at[order].set(out).reshape(n, k, -1)
  # Over-capacity assignments were computed (ragged_dot has no slots) but count as dropped.
  return out * keep[..., None].astype(out.dtype), dropped


def einsum(tokens: Array, expert_ids: Array, experts: Experts, act: Callable[[Array], Array],
           capacity: int) -> tuple[Array, Array]:
  """Capacity dispatch [n, k, E, C] → experts → per-assignment outputs (a `LocalDispatch`)."""
  num_experts = experts[0].shape[0]
  slot = routing.capacity_positions(expert_ids, num_experts)
  _, dropped = kept(expert_ids, num_experts, capacity)
  # one_hot of a slot >= capacity or of an id < 0 is all zeros: no row for
  # dropped assignments and padding.
  dispatch = (jax.nn.one_hot(expert_ids, num_experts, dtype=tokens.dtype)[..., None]
              * jax.nn.one_hot(slot, capacity, dtype=tokens.dtype)[..., None, :])  # [n,k,E,C]
  expert_in = jnp.einsum("nkec,nd->ecd", dispatch, tokens)
  expert_out = swiglu_experts(expert_in, *experts, act, expert_matmul)
  return jnp.einsum("nkec,ecd->nkd", dispatch, expert_out), dropped
