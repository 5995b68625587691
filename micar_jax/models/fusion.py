"""GatedFusion: the decoder's cross-modal sub-layer (REFERENCE_MODEL.md §3.9).

It returns `fusion(...) + CMHLA(...) + x` (an inner residual); the decoder
block adds `x` once more, exactly like the reference.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from micar_jax.models import attention, layers

Array = jax.Array


class GatedFusion(nn.Module):
  """Cross-attention to the image, gated mix with the text, global image context.

  Attributes:
    d_model, d_latent, num_heads, qk_nope_dim, qk_rope_dim, rope_theta:
      cross-attention dimensions.
    act_fn: activation of the gate and fusion MLPs.
    attention_dropout: dropout on cross-attention probabilities.
    dropout: dropout inside the fusion MLP.
    decode: cache the image keys/values for single-token decoding.
    dtype: computation dtype.
  """

  d_model: int
  d_latent: int
  num_heads: int
  qk_nope_dim: int
  qk_rope_dim: int
  act_fn: str
  attention_dropout: float
  dropout: float
  rope_theta: float = 10000.0
  decode: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, memory: Array | None, train: bool,
               position: Array | None = None) -> Array:
    """Fuses image tokens into the text stream.

    Args:
      x: [b, t, d_model] text stream.
      memory: [b, n_img, d_model] encoder output (None on cached decode steps).
      train: enables dropout.
      position: scalar text position when decoding.

    Returns:
      [b, t, d_model] = fusion + cross-attention + x.
    """
    act = layers.activation(self.act_fn)
    dense = lambda f, name, axes=(layers.MLP, layers.EMBED): layers.Dense(
        f, axes, use_bias=True, dtype=self.dtype, name=name)
    nx = layers.RMSNorm(name="norm1")(x)
    # The image summary is recomputed from the cache-free memory when present;
    # when decoding from cache it is read back from the 'cache' collection.
    if memory is not None:
      ni = layers.RMSNorm(name="norm2")(memory)
      pooled = jnp.concatenate([jnp.mean(ni, axis=1, keepdims=True),
                                jnp.max(ni, axis=1, keepdims=True)], axis=-1)
      global_img = dense(self.d_model, "global_proj")(pooled)  # [b, 1, d_model]
    else:
      ni = None
    if self.decode:
      cached = self.variable("cache", "global_img", lambda: global_img)
      if memory is not None:
        cached.value = global_img
      global_img = cached.value

    cross = attention.LatentCrossAttention(
        num_heads=self.num_heads, d_latent=self.d_latent, qk_nope_dim=self.qk_nope_dim,
        qk_rope_dim=self.qk_rope_dim, rope_theta=self.rope_theta,
        attention_dropout=self.attention_dropout, dtype=self.dtype, d_model=self.d_model,
        decode=self.decode, name="cross_attention")
    attended = cross(nx, ni, train, position) + x
    na = layers.RMSNorm(name="norm3")(attended)
    gate = act(dense(self.d_model, "gate_in")(jnp.concatenate([na, nx], axis=-1)))
    gate = nn.sigmoid(dense(self.d_model, "gate_out")(gate))
    gated = gate * na + (1 - gate) * nx
    combined = jnp.concatenate(
        [gated, na, jnp.broadcast_to(global_img.astype(na.dtype), na.shape)], axis=-1)
    h = nn.Dropout(self.dropout)(act(dense(self.d_model, "fusion_in")(combined)),
                                 deterministic=not train)
    h = nn.Dropout(self.dropout)(dense(self.d_model, "fusion_out")(h), deterministic=not train)
    return h + attended
