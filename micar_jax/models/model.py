"""MicarVLMoE: image → MSVE → projection → encoder; text → decoder → logits.

The image becomes a report here: `encode` turns images into visual tokens,
`decode` runs the decoder over report tokens (teacher forcing, or one token at
a time with a KV cache), `__call__` does both.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from micar_jax import defaults
from micar_jax.models import layers, msve, transformer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The hashable model hyper-parameters (built from `config.model` + `config.data`)."""

  vocab_size: int
  max_len: int
  stage_sizes: tuple[int, ...] = (3, 4, 23, 3)
  resnet_width: int = 64
  d_v: int = 2048
  pool_size: int = 7
  num_views: int = 1
  d_model: int = 512
  d_latent: int = 768
  num_heads: int = 8
  qk_nope_dim: int = 48
  qk_rope_dim: int = 48
  rope_theta: float = 10000.0
  d_ff: int = 2048
  num_layers: int = 3
  act_fn: str = "gelu"
  attention_dropout: float = 0.12
  dropout: float = 0.1
  num_experts: int = 8
  top_k: int = 2
  moe_combine: str = "sum"
  moe_aux_loss: str = "entropy"
  capacity_factor: float = -1.0
  moe_impl: str = "sort"
  dtype: str = "float32"
  remat: bool = False

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int | None = None
                  ) -> "ModelConfig":
    """Builds the model config; `vocab_size` overrides config.model.vocab_size."""
    m = config.model
    stages = tuple(m.resnet_stages) or defaults.RESNET_STAGES.get(m.resnet_depth)
    if stages is None:
      raise ValueError(f"unknown resnet_depth {m.resnet_depth}; expected one of "
                       f"{sorted(defaults.RESNET_STAGES)} or set model.resnet_stages")
    v = vocab_size or m.vocab_size
    if not v:
      raise ValueError("model.vocab_size is 0 and no tokenizer gave a vocabulary size "
                       "(pass --config.model.vocab_size=N)")
    return cls(
        vocab_size=int(v), max_len=config.data.text_seq_len, stage_sizes=tuple(stages),
        resnet_width=m.resnet_width, d_v=m.d_v, pool_size=m.pool_size,
        num_views=config.data.num_views, d_model=m.d_model, d_latent=m.d_latent,
        num_heads=m.num_heads, qk_nope_dim=m.qk_nope_dim, qk_rope_dim=m.qk_rope_dim,
        rope_theta=m.rope_theta, d_ff=m.d_ff, num_layers=m.num_layers, act_fn=m.act_fn,
        attention_dropout=m.attention_dropout, dropout=m.dropout, num_experts=m.num_experts,
        top_k=m.top_k, moe_combine=m.moe_combine, moe_aux_loss=m.moe_aux_loss,
        capacity_factor=m.capacity_factor, moe_impl=m.moe_impl, dtype=m.dtype, remat=m.remat)


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
    self.vis_enc = msve.MSVE(c.stage_sizes, c.resnet_width, c.d_v, c.pool_size, dt)
    self.proj_norm = layers.RMSNorm(layers.VISION)
    self.proj = layers.Dense(c.d_model, (layers.VISION, layers.EMBED), use_bias=True, dtype=dt)
    self.text_embs = transformer.TextEmbedding(c.vocab_size, c.d_model, c.max_len, c.dropout, dt)
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
    logits = self.gen_logits(self.out_norm(x)).astype(jnp.float32)
    return logits, merge_stats(stats)

  def __call__(self, images: Array, input_ids: Array, pad_mask: Array | None = None,
               train: bool = False) -> tuple[Array, dict[str, Array]]:
    """Teacher-forced forward: ([b,H,W,3], [b,T], [b,T]) -> (logits [b,T,V], stats)."""
    return self.decode_tokens(input_ids, self.encode(images, train), pad_mask, train)
