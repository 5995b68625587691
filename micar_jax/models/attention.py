"""Latent attention (MHLA self-attention, CMHLA cross-attention) with partial RoPE.

Reproduces the reference exactly (docs/reference_model.md §3.6-3.8):
  * q/k/v come from a down-projection → RMSNorm → up-projection;
  * heads are split head-minor `(d h)` but merged head-major `(h d)`;
  * each head is [nope | rope]; RoPE rotates only the first 2·(rope_dim // 4)
    channels of the rope slice with interleaved pairs, θ_j = base^(-2j/(rope_dim//2));
  * scores are scaled by 1/sqrt(nope + rope), masked with -1e9 (finite), softmaxed
    in float32 and dropped out.

Decoding uses a KV cache ('cache' collection): self-attention appends the new
token's rotated key and value at its absolute position; cross-attention stores
the image keys and values once, on the step that receives the memory.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from micar_jax import errors
from micar_jax.models import layers
from micar_jax.models.model_config import ModelConfig

Array = jax.Array

MASK_FILL = -1e9


def rope_frequencies(rope_dim: int, theta: float) -> np.ndarray:
  """The rotary frequencies of rotary-embedding-torch's RotaryEmbedding(rope_dim // 2).

  Returns [rope_dim // 4] float32 values theta^(-2j / (rope_dim // 2)), rounded
  as the reference rounds them (a float32 exponent, a float32 power, a float32
  reciprocal), with the power correctly rounded. A numpy constant on purpose:
  written with jnp, XLA folds it at compile time with its own float32 `pow`,
  and a jitted step then disagrees with the same model run op by op (and with
  the reference) in the last bit of some frequencies (1e-7 in the attention
  probabilities).
  """
  dim = rope_dim // 2
  exponent = np.arange(0, dim, 2, dtype=np.float32)[: dim // 2] / np.float32(dim)
  power = np.power(np.float64(theta), exponent.astype(np.float64)).astype(np.float32)
  return np.float32(1.0) / power


def apply_rope(x: Array, positions: Array, rope_dim: int, theta: float) -> Array:
  """Rotates the leading channels of x's rope slice in interleaved pairs.

  Args:
    x: [..., seq, rope_dim] rope slice of queries or keys.
    positions: [seq] integer positions.
    rope_dim: channels in the rope slice.
    theta: RoPE base.

  Returns:
    [..., seq, rope_dim]; channels >= 2·len(freqs) pass through unchanged.
  """
  freqs = rope_frequencies(rope_dim, theta)
  rot = 2 * freqs.shape[0]
  wide = layers.upcast(x.dtype)
  angles = positions.astype(wide)[:, None] * freqs.astype(wide)[None, :]  # [seq, rot / 2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  xf = x[..., :rot].astype(wide)
  pairs = xf.reshape(*xf.shape[:-1], rot // 2, 2)
  even, odd = pairs[..., 0], pairs[..., 1]
  rotated = jnp.stack([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
  rotated = rotated.reshape(xf.shape).astype(x.dtype)
  return jnp.concatenate([rotated, x[..., rot:]], axis=-1)


def split_heads(x: Array, num_heads: int) -> Array:
  """`b s (d h) -> b h s d`: channel c goes to head c % H, dim c // H."""
  b, s, c = x.shape
  return x.reshape(b, s, c // num_heads, num_heads).transpose(0, 3, 1, 2)


def merge_heads(x: Array) -> Array:
  """`b h s d -> b s (h d)`: head-major, unlike split_heads."""
  b, h, s, d = x.shape
  return x.transpose(0, 2, 1, 3).reshape(b, s, h * d)


def down_norm_up(x: Array, low: int, high: int, dtype: Any, name: str) -> Array:
  """Dense(low, no bias) → RMSNorm(low) → Dense(high, no bias): [..., d] -> [..., high]."""
  h = layers.Dense(low, (layers.EMBED, layers.LATENT), dtype=dtype, name=f"{name}_down")(x)
  h = layers.RMSNorm(layers.LATENT, name=f"{name}_norm")(h)
  return layers.Dense(high, (layers.LATENT, layers.HEADS), dtype=dtype, name=f"{name}_up")(h)


class _LatentAttentionBase(nn.Module):
  """The attention core shared by MHLA and CMHLA.

  Reads from `cfg`: num_heads H; d_latent, the q/k/v width (head_dim = d_latent / H
  = qk_nope_dim + qk_rope_dim); qk_nope_dim and qk_rope_dim, the per-head channels
  without and with RoPE; rope_theta; attention_dropout (on the probabilities);
  d_model; compute_dtype (softmax stays float32).

  Attributes:
    cfg: the model configuration.
    decode: single-token decoding with a cache.
  """

  cfg: ModelConfig
  decode: bool = False

  def _check_dims(self):
    c = self.cfg
    head_dim = c.d_latent // c.num_heads
    if c.d_latent % c.num_heads or head_dim != c.qk_nope_dim + c.qk_rope_dim:
      raise errors.ConfigError(
          f"d_latent={c.d_latent} must split into {c.num_heads} heads of "
          f"qk_nope_dim + qk_rope_dim = {c.qk_nope_dim + c.qk_rope_dim} channels")

  def rope(self, x: Array, positions: Array) -> Array:
    """Applies RoPE to the rope slice of [b, h, s, head_dim] heads."""
    c = self.cfg
    nope, rope = x[..., : c.qk_nope_dim], x[..., c.qk_nope_dim:]
    return jnp.concatenate([nope, apply_rope(rope, positions, c.qk_rope_dim, c.rope_theta)], -1)

  def attend(self, q: Array, k: Array, v: Array, mask: Array | None, train: bool) -> Array:
    """[b,h,q,d] x [b,h,k,d] -> output [b, q, d_model] after the head merge and wo.

    `mask` broadcasts to [b, h, q, k]; zero entries are filled with -1e9.
    """
    c, dtype = self.cfg, self.cfg.compute_dtype
    scale = 1.0 / (c.qk_nope_dim + c.qk_rope_dim) ** 0.5
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(layers.upcast(q.dtype)) * scale
    if mask is not None:
      scores = jnp.where(mask, scores, MASK_FILL)
    probs = jax.nn.softmax(scores, axis=-1)
    self.sow("intermediates", "attention_weights", probs)
    probs = nn.Dropout(c.attention_dropout)(probs, deterministic=not train)
    out = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(dtype), v.astype(dtype))
    return layers.Dense(c.d_model, (layers.HEADS, layers.EMBED), dtype=dtype,
                        name="wo")(merge_heads(out))


class LatentSelfAttention(_LatentAttentionBase):
  """MHLA: latent self-attention over one sequence.

  When decoding, the KV cache holds cfg.max_len (text_seq_len) positions.
  """

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, train: bool,
               position: Array | None = None) -> Array:
    """Self-attention.

    Args:
      x: [b, s, d_model] (s = 1 when decoding).
      mask: [b, 1 or h, s, s] boolean, or None (no mask).
      train: enables dropout.
      position: scalar absolute position of the token when decoding.

    Returns:
      [b, s, d_model].
    """
    self._check_dims()
    c = self.cfg
    dk = c.d_model // c.num_heads
    qkv = down_norm_up(x, 3 * dk, 3 * c.d_latent, c.compute_dtype, "qkv")
    q, k, v = (split_heads(t, c.num_heads) for t in jnp.split(qkv, 3, axis=-1))
    if not self.decode:
      positions = jnp.arange(x.shape[1])
      return self.attend(self.rope(q, positions), self.rope(k, positions), v, mask, train)
    positions = jnp.reshape(position, (1,))
    q, k = self.rope(q, positions), self.rope(k, positions)
    shape = (x.shape[0], c.num_heads, c.max_len, k.shape[-1])
    cached_k = self.variable("cache", "key", jnp.zeros, shape, k.dtype)
    cached_v = self.variable("cache", "value", jnp.zeros, shape, v.dtype)
    if not self.is_initializing():
      cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, (0, 0, position, 0))
      cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, (0, 0, position, 0))
    causal = (jnp.arange(c.max_len) <= position)[None, None, None, :]
    return self.attend(q, cached_k.value, cached_v.value, causal, train)


class LatentCrossAttention(_LatentAttentionBase):
  """CMHLA: text queries attend to image tokens; no mask.

  Queries get text positions, keys get image-token positions 0..n_img-1. When
  decoding, the image keys/values are read from the cache unless memory is given.
  """

  @nn.compact
  def __call__(self, x: Array, memory: Array | None, train: bool,
               position: Array | None = None) -> Array:
    """Cross-attention.

    Args:
      x: [b, t, d_model] normalised text stream (t = 1 when decoding).
      memory: [b, n_img, d_model] normalised image tokens; when decoding it is
        given on the first step (keys/values are cached) and None afterwards.
      train: enables dropout.
      position: scalar absolute text position when decoding.

    Returns:
      [b, t, d_model].
    """
    self._check_dims()
    c = self.cfg
    dk = c.d_model // c.num_heads
    q = split_heads(down_norm_up(x, dk, c.d_latent, c.compute_dtype, "q"), c.num_heads)
    q_pos = jnp.arange(x.shape[1]) if position is None else jnp.reshape(position, (1,))
    q = self.rope(q, q_pos)
    if memory is not None:
      kv = down_norm_up(memory, 2 * dk, 2 * c.d_latent, c.compute_dtype, "kv")
      k, v = (split_heads(t, c.num_heads) for t in jnp.split(kv, 2, axis=-1))
      k = self.rope(k, jnp.arange(memory.shape[1]))
    if self.decode:
      if memory is not None:
        cached_k = self.variable("cache", "key", lambda: k)
        cached_v = self.variable("cache", "value", lambda: v)
        cached_k.value, cached_v.value = k, v
      else:
        k = self.variable("cache", "key", None).value
        v = self.variable("cache", "value", None).value
    return self.attend(q, k, v, None, train)
