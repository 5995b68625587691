"""Top-k routing math shared by every MoE dispatch: choice, losses, capacity.

The router is the reference's (docs/reference_model.md §3.11): Dense(E, no
bias) on float32 tokens → softmax → top-k → renormalised gates. Capacity
priority is k-major: every token's first choice takes a slot before any
second choice, so the same tokens are dropped whichever dispatch runs.

The MoE layer records the experts it chose with `sow` into the COLLECTION
collection under EXPERTS ([batch, tokens, k] int32), so that tools such as
explain read the routing the model used instead of recomputing it. It is
flax's "intermediates", which `init` leaves out of the model's variables.
"""

import math

import jax
import jax.numpy as jnp

Array = jax.Array

# Where moe.MoE sows its expert choice; read it with mutable=[COLLECTION].
COLLECTION = "intermediates"
EXPERTS = "experts"


def router_logits(tokens: Array, router: Array) -> Array:
  """[n, d] tokens x [d, E] router kernel -> [n, E] logits in float32 (float64 for a float64 model)."""
  return jnp.dot(tokens.astype(jnp.promote_types(tokens.dtype, jnp.float32)), router)


def route(logits: Array, top_k: int) -> tuple[Array, Array, Array]:
  """Softmax over experts, top-k, renormalised.

  Args:
    logits: [tokens, E] router logits (float32).
    top_k: experts per token.

  Returns:
    probs [tokens, E], gates [tokens, k] (sum to 1), expert ids [tokens, k]
    int32, best first.
  """
  probs = jax.nn.softmax(logits, axis=-1)
  top_p, top_i = jax.lax.top_k(probs, top_k)
  return probs, top_p / jnp.sum(top_p, axis=-1, keepdims=True), top_i.astype(jnp.int32)


def combine_weights(gates: Array, combine: str) -> Array:
  """Weights [tokens, k] of each chosen expert's output in the token's sum.

  Args:
    gates: [tokens, k] renormalised gates.
    combine: "sum" (reference: unweighted sum of the k outputs; the router then
      learns only from the auxiliary loss) or "weighted" (gate-weighted).
  """
  if combine == "sum":
    return jnp.ones_like(gates)
  if combine == "weighted":
    return gates
  raise ValueError(f"unknown moe_combine {combine!r}; expected 'sum' or 'weighted'")


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
    expert_ids: [tokens, k]; a negative id (padding) takes no slot.
    num_experts: E.

  Returns:
    [tokens, k] int32 positions (0-based) within the chosen expert.
  """
  onehot = jax.nn.one_hot(expert_ids.T, num_experts, dtype=jnp.int32)  # [k, tokens, E]
  flat = onehot.reshape(-1, num_experts)
  pos = (jnp.cumsum(flat, axis=0) - 1) * flat
  return jnp.sum(pos, axis=-1).reshape(expert_ids.shape[::-1]).T
