"""GatedFusion: the decoder's cross-modal sub-layer (docs/reference_model.md §3.9).

It returns `fusion(...) + CMHLA(...) + x` (an inner residual); the decoder
block adds `x` once more, exactly like the reference.
"""


import flax.linen as nn
import jax
import jax.numpy as jnp

from micar_jax.models import attention, layers
from micar_jax.models.model_config import ModelConfig

Array = jax.Array


class GatedFusion(nn.Module):
  """Cross-attention to the image, gated mix with the text, global image context.

  Reads from `cfg`: d_model; act_fn (gate and fusion MLPs); dropout (fusion MLP);
  compute_dtype; and the cross-attention's settings (attention.LatentCrossAttention).

  Attributes:
    cfg: the model configuration.
    decode: cache the image keys/values for single-token decoding.
  """

  cfg: ModelConfig
  decode: bool = False

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
    c = self.cfg
    act = layers.activation(c.act_fn)
    dense = lambda name: layers.Dense(c.d_model, (layers.MLP, layers.EMBED), use_bias=True,
                                      dtype=c.compute_dtype, name=name)
    nx = layers.RMSNorm(name="norm1")(x)
    # The image summary is recomputed from the cache-free memory when present;
    # when decoding from cache it is read back from the 'cache' collection.
    if memory is not None:
      ni = layers.RMSNorm(name="norm2")(memory)
      pooled = jnp.concatenate([jnp.mean(ni, axis=1, keepdims=True),
                                jnp.max(ni, axis=1, keepdims=True)], axis=-1)
      global_img = dense("global_proj")(pooled)  # [b, 1, d_model]
    else:
      ni = None
    if self.decode:
      cached = self.variable("cache", "global_img", lambda: global_img)
      if memory is not None:
        cached.value = global_img
      global_img = cached.value

    cross = attention.LatentCrossAttention(c, self.decode, name="cross_attention")
    attended = cross(nx, ni, train, position) + x
    na = layers.RMSNorm(name="norm3")(attended)
    gate = act(dense("gate_in")(jnp.concatenate([na, nx], axis=-1)))
    gate = nn.sigmoid(dense("gate_out")(gate))
    gated = gate * na + (1 - gate) * nx
    combined = jnp.concatenate(
        [gated, na, jnp.broadcast_to(global_img.astype(na.dtype), na.shape)], axis=-1)
    h = nn.Dropout(c.dropout)(act(dense("fusion_in")(combined)), deterministic=not train)
    h = nn.Dropout(c.dropout)(dense("fusion_out")(h), deterministic=not train)
    return h + attended
