"""Text embedding, encoder blocks and decoder blocks (docs/reference_model.md §3.4-3.10)."""

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from micar_jax.models import attention, fusion, layers, moe, partitioning
from micar_jax.models.model_config import ModelConfig

Array = jax.Array


# The reference's own table for d_model 512 (every published config), as torch computes it
# (written by micar_jax/tools/position_table.py): numpy's float32 sin, cos and exp round
# differently from torch's in about a quarter of the entries.
_REFERENCE_TABLE = os.path.join(os.path.dirname(__file__), "reference_sinusoid_512.npy")


@functools.cache
def _reference_table() -> np.ndarray:
  return np.load(_REFERENCE_TABLE)


def sinusoidal_table(length: int, d_model: int) -> np.ndarray:
  """[length, d_model] fixed PE with sin/cos interleaved (even = sin, odd = cos).

  Bit for bit the reference's where its torch-computed table covers the shape
  (d_model 512, up to 256 positions); computed with numpy elsewhere.
  """
  reference = _reference_table()
  if d_model == reference.shape[1] and length <= reference.shape[0]:
    return reference[:length].copy()
  pos = np.arange(length, dtype=np.float32)[:, None]
  div = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * (-math.log(10000.0) / d_model))
  pe = np.zeros((length, d_model), np.float32)
  pe[:, 0::2] = np.sin(pos * div)
  pe[:, 1::2] = np.cos(pos * div)
  return pe


class TextEmbedding(nn.Module):
  """Embedding · sqrt(d_model) + sinusoidal PE + dropout.

  Reads from `cfg`: vocab_size V, d_model, max_len (the PE table length,
  text_seq_len), dropout and compute_dtype.

  Attributes:
    cfg: the model configuration.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, ids: Array, train: bool, position: Array | None = None) -> Array:
    """[b, t] int ids -> [b, t, d_model]; `position` offsets the PE when decoding (t = 1)."""
    c, dtype = self.cfg, self.cfg.compute_dtype
    table = self.param("embedding", layers.xavier_uniform((layers.VOCAB, layers.EMBED)),
                       (c.vocab_size, c.d_model))
    # Gather the (small) table whole before the lookup, rather than reshuffling activations
    # around an fsdp-sharded table.
    table = partitioning.constrain(table, (None, None))
    x = jnp.take(table, ids, axis=0).astype(dtype) * math.sqrt(c.d_model)
    pe = jnp.asarray(sinusoidal_table(c.max_len, c.d_model))
    start = 0 if position is None else position
    pe = jax.lax.dynamic_slice_in_dim(pe, start, ids.shape[1], axis=0)
    return nn.Dropout(c.dropout)(x + pe.astype(dtype), deterministic=not train)


class EncoderBlock(nn.Module):
  """Pre-norm latent self-attention (no mask) + SwiGLU over image tokens.

  Attributes:
    cfg: the model configuration.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """[b, n_img, d_model] -> [b, n_img, d_model]."""
    c = self.cfg
    sa = attention.LatentSelfAttention(c, name="self_attention")
    x = x + sa(layers.RMSNorm(name="norm_sa")(x), None, train)
    ff = layers.SwiGLU(c.d_ff, c.act_fn, c.dropout, c.compute_dtype, name="ff")
    return x + ff(layers.RMSNorm(name="norm_ff")(x), train)


class DecoderBlock(nn.Module):
  """Causal latent self-attention, GatedFusion (double residual), MoE.

  Attributes:
    cfg: the model configuration.
    decode: single-token decoding with caches.
  """

  cfg: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, memory: Array | None, mask: Array | None, train: bool,
               position: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """One decoder layer.

    Args:
      x: [b, t, d_model] text stream.
      memory: [b, n_img, d_model] encoder output (None on cached decode steps).
      mask: [b, 1, t, t] causal-and-padding mask (ignored when decoding).
      train: enables dropout.
      position: scalar text position when decoding.

    Returns:
      [b, t, d_model] and the MoE statistics.
    """
    c = self.cfg
    sa = attention.LatentSelfAttention(c, self.decode, name="self_attention")
    x = x + sa(layers.RMSNorm(name="norm_sa")(x), mask, train, position)
    gf = fusion.GatedFusion(c, self.decode, name="gated_fusion")
    x = x + gf(x, memory, train, position)
    y, stats = moe.MoE(c, name="moe")(layers.RMSNorm(name="norm_moe")(x), train)
    return x + y, stats
