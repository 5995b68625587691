"""One-device dispatches of routed tokens to stacked SwiGLU experts.

Every dispatch (these two and `moe_parallel.expert_parallel`) has the
`Dispatch` signature

  (tokens [n, d], expert_ids [n, k], (w1, w3, w2), act, capacity_factor)
      -> (outputs [n, k, d], dropped fraction of the n·k assignments)

and returns each assignment's unweighted expert output, zero where the
assignment was dropped; `moe.MoE` applies dropout and the combine weights.

  * `sort`: assignments sorted by expert, experts applied with
    `jax.lax.ragged_dot` on the grouped rows (dropless, or capacity-limited);
  * `einsum`: fixed-capacity dispatch/combine tensors (GShard style).
"""

from typing import Callable

import jax
import jax.numpy as jnp

from micar_jax.models import routing

Array = jax.Array
Experts = tuple[Array, Array, Array]
Dispatch = Callable[[Array, Array, Experts, Callable[[Array], Array], float],
                    tuple[Array, Array]]


def swiglu_experts(x: Array, w1: Array, w3: Array, w2: Array, act: Callable[[Array], Array],
                   matmul: Callable[[Array, Array], Array]) -> Array:
  """Applies stacked SwiGLU experts with a caller-supplied grouped matmul."""
  h = act(matmul(x, w1)) * matmul(x, w3)
  return matmul(h, w2)


def expert_matmul(x: Array, w: Array) -> Array:
  """Per-expert matmul of equal-sized groups: [E, C, i] x [E, i, o] -> [E, C, o]."""
  return jnp.einsum("eci,eio->eco", x, w)


def _capacity_slots(expert_ids: Array, num_experts: int, capacity_factor: float
                    ) -> tuple[int, Array, Array]:
  """(capacity, slot [n, k], dropped fraction) over all n tokens."""
  n, k = expert_ids.shape
  capacity = routing.expert_capacity(n, k, num_experts, capacity_factor)
  slot = routing.capacity_positions(expert_ids, num_experts)
  dropped = 1.0 - jnp.mean((slot < capacity).astype(jnp.float32))
  return capacity, slot, dropped


def sort(tokens: Array, expert_ids: Array, experts: Experts, act: Callable[[Array], Array],
         capacity_factor: float) -> tuple[Array, Array]:
  """Sort assignments by expert, grouped matmuls, unsort (see `Dispatch`)."""
  n, k = expert_ids.shape
  num_experts = experts[0].shape[0]
  capacity, slot, dropped = _capacity_slots(expert_ids, num_experts, capacity_factor)
  flat_ids = expert_ids.reshape(-1)
  order = jnp.argsort(flat_ids, stable=True)
  rows = tokens[order // k]  # [n·k, d] grouped by expert
  group_sizes = jnp.bincount(flat_ids, length=num_experts).astype(jnp.int32)
  ragged = lambda lhs, rhs: jax.lax.ragged_dot(lhs, rhs, group_sizes)
  out = swiglu_experts(rows, *experts, act, ragged)
  out = jnp.zeros_like(out).at[order].set(out).reshape(n, k, -1)
  # Over-capacity assignments were computed (ragged_dot has no slots) but count as dropped.
  return out * (slot < capacity)[..., None].astype(out.dtype), dropped


def einsum(tokens: Array, expert_ids: Array, experts: Experts, act: Callable[[Array], Array],
           capacity_factor: float) -> tuple[Array, Array]:
  """Capacity dispatch [n, k, E, C] → experts → per-assignment outputs (see `Dispatch`)."""
  num_experts = experts[0].shape[0]
  capacity, slot, dropped = _capacity_slots(expert_ids, num_experts, capacity_factor)
  # one_hot of a slot >= capacity is all zeros: dropped assignments get no row.
  dispatch = (jax.nn.one_hot(expert_ids, num_experts, dtype=tokens.dtype)[..., None]
              * jax.nn.one_hot(slot, capacity, dtype=tokens.dtype)[..., None, :])  # [n,k,E,C]
  expert_in = jnp.einsum("nkec,nd->ecd", dispatch, tokens)
  expert_out = swiglu_experts(expert_in, *experts, act, expert_matmul)
  return jnp.einsum("nkec,ecd->nkd", dispatch, expert_out), dropped
