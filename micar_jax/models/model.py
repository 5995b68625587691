"""MicarVLMoE: image → MSVE → projection → encoder; text → decoder → logits.

The image becomes a report here: `encode` turns images into visual tokens,
`decode` runs the decoder over report tokens (teacher forcing, or one token at
a time with a KV cache), `__call__` does both.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from micar_jax.models import layers, msve, transformer
from micar_jax.models.model_config import ModelConfig

Array = jax.Array


def causal_mask(pad_mask: Array | None, length: int) -> Array:
  """tril(T×T) AND key padding: [b, T] -> [b, 1, T, T] bool (or [1, 1, T, T])."""
  causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
  if pad_mask is None:
    return causal
  return causal & (pad_mask.astype(bool)[:, None, None, :])


def merge_stats(per_layer: list[dict[str, Array]]) -> dict[str, Array]:
  """Averages aux/z losses over layers and stacks loads: load [L, E], dropped [L]."""
  return {
      "aux": sum(s["aux"] for s in per_layer) / len(per_layer),
      "z": sum(s["z"] for s in per_layer) / len(per_layer),
      "load": jnp.stack([s["load"] for s in per_layer]),
      "dropped": jnp.stack([s["dropped"] for s in per_layer]),
  }


class MicarVLMoE(nn.Module):
  """The full model.

  Attributes:
    cfg: ModelConfig.
    decode: build the decoder for single-token cached decoding.
  """

  cfg: ModelConfig
  decode: bool = False

  def setup(self):
    c = self.cfg
    dt = c.compute_dtype
    self.vis_enc = msve.MSVE(c)
    self.proj_norm = layers.RMSNorm(layers.VISION)
    self.proj = layers.Dense(c.d_model, (layers.VISION, layers.EMBED), use_bias=True, dtype=dt)
    self.text_embs = transformer.TextEmbedding(c)
    enc_cls, dec_cls = transformer.EncoderBlock, transformer.DecoderBlock
    if c.remat:
      enc_cls = nn.remat(enc_cls, static_argnums=(2,))
      dec_cls = nn.remat(dec_cls, static_argnums=(4,))
    self.encoder = [enc_cls(c, name=f"encoder_{i}") for i in range(c.num_layers)]
    self.decoder = [dec_cls(c, self.decode, name=f"decoder_{i}") for i in range(c.num_layers)]
    self.out_norm = layers.RMSNorm()
    self.gen_logits = layers.Dense(c.vocab_size, (layers.EMBED, layers.VOCAB), dtype=dt)

  def encode(self, images: Array, train: bool = False) -> Array:
    """Images -> encoder output.

    Args:
      images: [b, H, W, 3] normalised, or [b, views, H, W, 3] for multi-view
        datasets (each view's tokens are concatenated).
      train: BatchNorm batch statistics and dropout.

    Returns:
      [b, views · pool_size², d_model].
    """
    if images.ndim == 5:
      b, v = images.shape[:2]
      tokens = self.vis_enc(images.reshape(b * v, *images.shape[2:]), train)
      tokens = tokens.reshape(b, v * tokens.shape[1], tokens.shape[2])
    else:
      tokens = self.vis_enc(images, train)
    x = self.proj(self.proj_norm(tokens))
    for block in self.encoder:
      x = block(x, train)
    return x

  def decode_tokens(self, input_ids: Array, memory: Array | None, pad_mask: Array | None = None,
                    train: bool = False, position: Array | None = None
                    ) -> tuple[Array, dict[str, Array]]:
    """Decoder over report tokens.

    Args:
      input_ids: [b, T] ids (teacher forcing) or [b, 1] when decoding.
      memory: [b, n_img, d_model]; when decoding, given on the first step only.
      pad_mask: [b, T] (1 = real token) for the key-padding mask; None = causal only.
      train: dropout.
      position: scalar position of the single token when decoding.

    Returns:
      logits [b, T, V] (float32) and MoE statistics (aux, z, load [L, E], dropped [L]).
    """
    x = self.text_embs(input_ids, train, position)
    mask = None if self.decode else causal_mask(pad_mask, input_ids.shape[1])
    stats = []
    for block in self.decoder:
      x, s = block(x, memory, mask, train, position)
      stats.append(s)
    logits = self.gen_logits(self.out_norm(x)).astype(layers.upcast(x.dtype))
    return logits, merge_stats(stats)

  def __call__(self, images: Array, input_ids: Array, pad_mask: Array | None = None,
               train: bool = False) -> tuple[Array, dict[str, Array]]:
    """Teacher-forced forward: ([b,H,W,3], [b,T], [b,T]) -> (logits [b,T,V], stats)."""
    return self.decode_tokens(input_ids, self.encode(images, train), pad_mask, train)
