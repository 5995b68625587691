"""Sparse mixture of SwiGLU experts with top-k routing.

Routing (router logits, top-k, auxiliary losses, capacity) is `routing`'s; the
sparse compute is one of the `DISPATCH` implementations, chosen by `moe_impl`:

  * "sort": assignments sorted by expert, `jax.lax.ragged_dot` (moe_dispatch.py);
  * "einsum": fixed-capacity dispatch/combine tensors, GShard style (moe_dispatch.py);
  * "expert_parallel": experts sharded over the mesh's "expert" axis, tokens
    exchanged with all-to-all inside shard_map (moe_parallel.py).

Under a mesh each runs once per batch shard on that shard's tokens
(`moe_parallel.data_parallel` for sort and einsum), and capacity is counted
per batch shard; all three take the same arguments and give the same outputs.
Dropped assignments contribute zero (the residual carries the token). Expert
weights are stacked on a leading axis named `expert`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from micar_jax import errors
from micar_jax.models import layers, moe_dispatch, moe_parallel, routing
from micar_jax.models.model_config import ModelConfig

Array = jax.Array

DISPATCH: dict[str, moe_dispatch.Dispatch] = {
    "sort": moe_parallel.data_parallel(moe_dispatch.sort),
    "einsum": moe_parallel.data_parallel(moe_dispatch.einsum),
    "expert_parallel": moe_parallel.expert_parallel,
}


def dispatch_fn(impl: str) -> moe_dispatch.Dispatch:
  """The dispatch that config.model.moe_impl names."""
  if impl not in DISPATCH:
    raise errors.ConfigError(f"unknown moe_impl {impl!r}; expected one of "
                             f"{', '.join(repr(name) for name in DISPATCH)}")
  return DISPATCH[impl]


class MoE(nn.Module):
  """Top-k routed SwiGLU experts.

  Reads cfg.num_experts (E), top_k (k), d_ff, act_fn, dropout (on each expert's
  output, per token and choice), moe_combine ("sum" as the reference, or
  "weighted"; see `routing.combine_weights`), moe_aux_loss ("entropy" or
  "switch"; see `routing.aux_losses`), capacity_factor (<= 0 dropless, else
  slots = ceil(cf · tokens of a batch shard · k / E)), moe_impl (a `DISPATCH`
  name) and the compute dtype (the router runs in float32).
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, dict[str, Array]]:
    """Routes tokens to experts.

    Sows the chosen experts [batch, tokens, k] (best first) as
    `routing.COLLECTION` / `routing.EXPERTS`.

    Args:
      x: [batch, tokens, d_model].
      train: enables dropout.

    Returns:
      y [batch, tokens, d_model] and stats {"aux", "z", "load" [E], "dropped"}.
    """
    b, t, d = x.shape
    c = self.cfg
    e = c.num_experts
    dispatch = dispatch_fn(c.moe_impl)
    tokens = x.reshape(b * t, d)
    router = self.param("router", layers.xavier_uniform((layers.EMBED, None)), (d, e))
    logits = routing.router_logits(tokens, router)
    # Row-wise, per batch shard under a mesh; the losses below stay means over all tokens.
    probs, gates, ids = moe_parallel.per_batch_shard(
        lambda rows: routing.route(rows, c.top_k))(logits)
    self.sow(routing.COLLECTION, routing.EXPERTS, ids.reshape(b, t, c.top_k))
    stats = routing.aux_losses(logits, probs, ids, c.moe_aux_loss)
    weights = routing.combine_weights(gates, c.moe_combine)

    init = layers.xavier_uniform
    w1 = self.param("w1", init((layers.EXPERT, layers.EMBED, layers.MLP), (0,)), (e, d, c.d_ff))
    w3 = self.param("w3", init((layers.EXPERT, layers.EMBED, layers.MLP), (0,)), (e, d, c.d_ff))
    w2 = self.param("w2", init((layers.EXPERT, layers.MLP, layers.EMBED), (0,)), (e, c.d_ff, d))
    experts = tuple(w.astype(c.compute_dtype) for w in (w1, w3, w2))
    out, stats["dropped"] = dispatch(tokens.astype(c.compute_dtype), ids, experts,
                                     layers.activation(c.act_fn), c.capacity_factor)
    # One dropout over every impl's [tokens, k, d] outputs, outside any shard_map: with
    # partitionable threefry its mask depends on the rng only, not on the mesh.
    out = nn.Dropout(c.dropout)(out, deterministic=not train)
    y = jnp.einsum("nkd,nk->nd", out, weights.astype(out.dtype))
    return y.reshape(b, t, d).astype(x.dtype), stats
