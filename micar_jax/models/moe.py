"""Sparse mixture of SwiGLU experts with top-k routing.

Routing is the reference's (REFERENCE_MODEL.md §3.11): Dense(E, no bias) →
softmax → top-k → renormalised. Each token is computed by its k experts only:

  * `impl="sort"`: assignments sorted by expert, experts applied with
    `jax.lax.ragged_dot` on the grouped rows (dropless, or capacity-limited);
  * `impl="einsum"`: fixed-capacity dispatch/combine tensors (GShard style),
    the form that expert parallelism shards with all-to-all.

Capacity priority is k-major: every token's first choice is placed before any
second choice. Dropped assignments contribute zero (the residual carries the
token). Expert weights are stacked on a leading axis named `expert`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from micar_jax.models import layers

Array = jax.Array


def route(logits: Array, top_k: int) -> tuple[Array, Array, Array]:
  """Softmax over experts, top-k, renormalised.

  Args:
    logits: [tokens, E] router logits (float32).
    top_k: experts per token.

  Returns:
    probs [tokens, E], gates [tokens, k] (sum to 1), expert ids [tokens, k] int32.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  top_p, top_i = jax.lax.top_k(probs, top_k)
  return probs, top_p / jnp.sum(top_p, axis=-1, keepdims=True), top_i.astype(jnp.int32)


def aux_losses(logits: Array, probs: Array, expert_ids: Array, kind: str) -> dict[str, Array]:
  """Load-balancing and z losses of one layer.

  Args:
    logits: [tokens, E]; probs: [tokens, E]; expert_ids: [tokens, k].
    kind: "entropy" (reference: Σ p̄·log(p̄ + 1e-8), p̄ = mean softmax over all
      tokens, padding included; minimum -ln E) or "switch" (E·Σ f·P with f the
      share of the tokens·k assignments per expert, so Σf = 1 and balance gives 1).

  Returns:
    {"aux": scalar, "z": mean(logsumexp(logits)²), "load": [E] assignment shares}.
  """
  num_experts = probs.shape[-1]
  mean_p = jnp.mean(probs, axis=0)
  load = jnp.mean(jax.nn.one_hot(expert_ids, num_experts, dtype=jnp.float32), axis=(0, 1))
  if kind == "entropy":
    aux = jnp.sum(mean_p * jnp.log(mean_p + 1e-8))
  elif kind == "switch":
    aux = num_experts * jnp.sum(load * mean_p)
  else:
    raise ValueError(f"unknown moe_aux_loss {kind!r}; expected 'entropy' or 'switch'")
  z = jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))
  return {"aux": aux, "z": z, "load": load}


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, factor: float) -> int:
  """Slots per expert: ceil(factor · tokens · k / E); factor <= 0 means no limit."""
  if factor <= 0:
    return num_tokens
  return max(1, min(num_tokens, math.ceil(factor * num_tokens * top_k / num_experts)))


def capacity_positions(expert_ids: Array, num_experts: int) -> Array:
  """Slot of each assignment in its expert's buffer, k-major priority.

  Args:
    expert_ids: [tokens, k].

  Returns:
    [tokens, k] int32 positions (0-based) within the chosen expert.
  """
  onehot = jax.nn.one_hot(expert_ids.T, num_experts, dtype=jnp.int32)  # [k, tokens, E]
  flat = onehot.reshape(-1, num_experts)
  pos = (jnp.cumsum(flat, axis=0) - 1) * flat
  return jnp.sum(pos, axis=-1).reshape(expert_ids.shape[::-1]).T


def swiglu_experts(x: Array, w1: Array, w3: Array, w2: Array, act, matmul) -> Array:
  """Applies stacked SwiGLU experts with a caller-supplied grouped matmul."""
  h = act(matmul(x, w1)) * matmul(x, w3)
  return matmul(h, w2)


class MoE(nn.Module):
  """Top-k routed SwiGLU experts.

  Attributes:
    num_experts: E.
    top_k: k.
    d_ff: expert hidden width.
    act_fn: activation name.
    dropout: dropout on each expert's output (per token and choice).
    combine: "sum" (reference: unweighted sum of the k outputs; the router then
      learns only from the auxiliary loss) or "weighted" (gate-weighted).
    aux_loss: "entropy" (reference) or "switch".
    capacity_factor: <= 0 for dropless, else slots = ceil(cf · tokens · k / E).
    impl: "sort" (ragged_dot), "einsum" (capacity buffers) or "expert_parallel"
      (moe_parallel.py: experts sharded over the mesh's "expert" axis; capacity per shard).
    dtype: computation dtype; the router runs in float32.
  """

  num_experts: int
  top_k: int
  d_ff: int
  act_fn: str
  dropout: float
  combine: str = "sum"
  aux_loss: str = "entropy"
  capacity_factor: float = -1.0
  impl: str = "sort"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, dict[str, Array]]:
    """Routes tokens to experts.

    Args:
      x: [batch, tokens, d_model].
      train: enables dropout.

    Returns:
      y [batch, tokens, d_model] and stats {"aux", "z", "load" [E], "dropped"}.
    """
    b, t, d = x.shape
    e = self.num_experts
    tokens = x.reshape(b * t, d)
    router = self.param("router", layers.xavier_uniform((layers.EMBED, None)), (d, e))
    logits = jnp.dot(tokens.astype(jnp.float32), router)
    probs, gates, ids = route(logits, self.top_k)
    stats = aux_losses(logits, probs, ids, self.aux_loss)

    init = layers.xavier_uniform
    w1 = self.param("w1", init((layers.EXPERT, layers.EMBED, layers.MLP), (0,)), (e, d, self.d_ff))
    w3 = self.param("w3", init((layers.EXPERT, layers.EMBED, layers.MLP), (0,)), (e, d, self.d_ff))
    w2 = self.param("w2", init((layers.EXPERT, layers.MLP, layers.EMBED), (0,)), (e, self.d_ff, d))
    w1, w3, w2 = (w.astype(self.dtype) for w in (w1, w3, w2))
    tokens = tokens.astype(self.dtype)

    if self.combine == "sum":
      weights = jnp.ones_like(gates)
    elif self.combine == "weighted":
      weights = gates
    else:
      raise ValueError(f"unknown moe_combine {self.combine!r}; expected 'sum' or 'weighted'")
    capacity = expert_capacity(b * t, self.top_k, e, self.capacity_factor)
    keep = capacity_positions(ids, e) < capacity  # [tokens, k]
    stats["dropped"] = 1.0 - jnp.mean(keep.astype(jnp.float32))
    act = layers.activation(self.act_fn)

    if self.impl == "sort":
      out = self._sorted(tokens, ids, keep, (w1, w3, w2), act)
    elif self.impl == "einsum":
      out = self._einsum(tokens, ids, capacity, (w1, w3, w2), act)
    elif self.impl == "expert_parallel":
      # Imported here because moe_parallel imports this module.
      from micar_jax.models import moe_parallel  # pylint: disable=g-import-not-at-top
      out, stats["dropped"] = moe_parallel.expert_parallel(
          tokens, ids, (w1, w3, w2), act, self.capacity_factor)
    else:
      raise ValueError(f"unknown moe_impl {self.impl!r}; expected 'sort', 'einsum' or "
                       "'expert_parallel'")
    # One dropout over every impl's [tokens, k, d] outputs, outside any shard_map: with
    # partitionable threefry its mask depends on the rng only, not on the mesh.
    out = nn.Dropout(self.dropout)(out, deterministic=not train)
    y = jnp.einsum("nkd,nk->nd", out, weights.astype(out.dtype))
    return y.reshape(b, t, d).astype(x.dtype), stats

  def _sorted(self, tokens, ids, keep, ws, act):
    """Sort assignments by expert, grouped matmuls, unsort: -> [tokens, k, d]."""
    n, k = ids.shape
    flat_ids = ids.reshape(-1)
    order = jnp.argsort(flat_ids, stable=True)
    rows = tokens[order // k]  # [tokens·k, d] grouped by expert
    group_sizes = jnp.bincount(flat_ids, length=self.num_experts).astype(jnp.int32)
    ragged = lambda lhs, rhs: jax.lax.ragged_dot(lhs, rhs, group_sizes)
    out = swiglu_experts(rows, *ws, act, ragged)
    out = jnp.zeros_like(out).at[order].set(out).reshape(n, k, -1)
    # Over-capacity assignments were computed (ragged_dot has no slots) but count as dropped.
    return out * keep[..., None].astype(out.dtype)

  def _einsum(self, tokens, ids, capacity, ws, act):
    """Capacity dispatch [tokens, k, E, C] → experts → per-assignment outputs [tokens, k, d]."""
    slot = capacity_positions(ids, self.num_experts)
    # one_hot of a slot >= capacity is all zeros: dropped assignments get no row.
    dispatch = (jax.nn.one_hot(ids, self.num_experts, dtype=tokens.dtype)[..., None]
                * jax.nn.one_hot(slot, capacity, dtype=tokens.dtype)[..., None, :])  # [n,k,E,C]
    expert_in = jnp.einsum("nkec,nd->ecd", dispatch, tokens)
    batched = lambda lhs, rhs: jnp.einsum("ecd,edf->ecf", lhs, rhs)
    expert_out = swiglu_experts(expert_in, *ws, act, batched)
    return jnp.einsum("nkec,ecd->nkd", dispatch, expert_out)
