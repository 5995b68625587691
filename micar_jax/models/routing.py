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
from typing import Callable

import jax
import jax.numpy as jnp

from micar_jax import errors

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


# moe_combine name -> weights [tokens, k] of the chosen experts' outputs from their gates.
# "sum" is the reference (an unweighted sum of the k outputs; the router then
# learns only from the auxiliary loss); "weighted" weights each by its gate.
COMBINES: dict[str, Callable[[Array], Array]] = {
    "sum": jnp.ones_like,
    "weighted": lambda gates: gates,
}


def combine_weights(gates: Array, combine: str) -> Array:
  """Weights [tokens, k] of each chosen expert's output in the token's sum.

  Args:
    gates: [tokens, k] renormalised gates.
    combine: a `COMBINES` name.
  """
  if combine not in COMBINES:
    raise errors.ConfigError(f"unknown moe_combine {combine!r}; expected one of {tuple(COMBINES)}")
  return COMBINES[combine](gates)


def _entropy_loss(mean_p: Array, load: Array) -> Array:
  """Σ p̄·log(p̄ + 1e-8) (reference; minimum -ln E)."""
  del load
  return jnp.sum(mean_p * jnp.log(mean_p + 1e-8))


def _switch_loss(mean_p: Array, load: Array) -> Array:
  """E·Σ f·P: balance gives 1."""
  return mean_p.shape[-1] * jnp.sum(load * mean_p)


# moe_aux_loss name -> load-balancing loss of (p̄ [E]: the mean softmax over all
# tokens, padding included; f [E]: the share of the tokens·k assignments per expert).
AUX_LOSSES: dict[str, Callable[[Array, Array], Array]] = {
    "entropy": _entropy_loss,
    "switch": _switch_loss,
}


def aux_losses(logits: Array, probs: Array, expert_ids: Array, kind: str) -> dict[str, Array]:
  """Load-balancing and z losses of one layer.

  Args:
    logits: [tokens, E]; probs: [tokens, E]; expert_ids: [tokens, k].
    kind: an `AUX_LOSSES` name.

  Returns:
    {"aux": scalar, "z": mean(logsumexp(logits)²), "load": [E] assignment shares}.
  """
  num_experts = probs.shape[-1]
  mean_p = jnp.mean(probs, axis=0)
  load = jnp.mean(jax.nn.one_hot(expert_ids, num_experts, dtype=jnp.float32), axis=(0, 1))
  if kind not in AUX_LOSSES:
    raise errors.ConfigError(f"unknown moe_aux_loss {kind!r}; expected one of {tuple(AUX_LOSSES)}")
  aux = AUX_LOSSES[kind](mean_p, load)
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
