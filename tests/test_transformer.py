"""Text embedding (interleaved sinusoidal PE, √d scale) and the blocks' residual structure."""

import dataclasses
import math
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax.config import defaults
from micar_jax.models import model as model_lib
from micar_jax.models import transformer


def test_sinusoidal_table_is_interleaved():
  pe = transformer.sinusoidal_table(5, 8)
  pos, i = 3, 2  # pair i uses div = exp(2i * -ln(10000) / d)
  div = math.exp(2 * i * -math.log(10000.0) / 8)
  np.testing.assert_allclose(pe[pos, 2 * i], math.sin(pos * div), rtol=1e-6)
  np.testing.assert_allclose(pe[pos, 2 * i + 1], math.cos(pos * div), rtol=1e-6)


def test_the_d512_table_is_the_reference_formula_within_float32_rounding():
  pe = transformer.sinusoidal_table(256, 512)
  pos = np.arange(256, dtype=np.float64)[:, None]
  div = np.exp(np.arange(0, 512, 2) * -math.log(10000.0) / 512)
  want = np.zeros((256, 512))
  want[:, 0::2], want[:, 1::2] = np.sin(pos * div), np.cos(pos * div)
  assert pe.dtype == np.float32 and pe.shape == (256, 512)
  # Rounding of the float32 argument (pos * div) dominates: at most ~|pos| ulp of it.
  np.testing.assert_allclose(pe, want, atol=3e-5)
  np.testing.assert_array_equal(transformer.sinusoidal_table(60, 512), pe[:60])


def test_the_d512_table_is_the_references_bits():
  """Against torch computing the reference's PositionalEmbedding (or the class itself)."""
  torch = pytest.importorskip("torch", reason="the reference's bits come from torch")
  src = os.environ.get("MICAR_REFERENCE_SRC")
  if src and os.path.isdir(os.path.join(src, "architecture")):
    sys.path.insert(0, src)
    from architecture import blocks  # pylint: disable=g-import-not-at-top
    want = blocks.PositionalEmbedding(512, 100, 0.0).pe[0].numpy()
  else:
    pos = torch.arange(0, 100, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, 512, 2) * (-math.log(10000.0) / 512))
    want = torch.zeros(100, 512)
    want[:, 0::2], want[:, 1::2] = torch.sin(pos * div_term), torch.cos(pos * div_term)
    want = want.numpy()
  np.testing.assert_array_equal(transformer.sinusoidal_table(100, 512), want)


def test_text_embedding_scales_and_adds_pe_at_the_decode_position():
  mc = model_lib.ModelConfig.from_config(defaults.tiny(defaults.base_config()), 11)
  emb = transformer.TextEmbedding(dataclasses.replace(mc, d_model=8, max_len=6, dropout=0.0))
  ids = jnp.asarray([[1, 4, 7]])
  v = nn.meta.unbox(emb.init(jax.random.PRNGKey(0), ids, False))
  table = np.asarray(v["params"]["embedding"])
  out = np.asarray(emb.apply(v, ids, False))
  want = table[[1, 4, 7]] * math.sqrt(8) + transformer.sinusoidal_table(6, 8)[:3]
  np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-6)
  single = emb.apply(v, ids[:, 2:], False, jnp.int32(2))
  np.testing.assert_allclose(single[0, 0], want[2], rtol=1e-5, atol=1e-6)


def _tiny_cfg():
  c = defaults.tiny(defaults.base_config())
  c.data.text_seq_len = 5
  mc = model_lib.ModelConfig.from_config(c, 12)
  return dataclasses.replace(mc, dropout=0.0, attention_dropout=0.0)


def test_encoder_block_shape_and_residual():
  mc = _tiny_cfg()
  block = transformer.EncoderBlock(mc)
  x = np.random.RandomState(0).randn(2, 49, mc.d_model).astype(np.float32)
  v = nn.meta.unbox(block.init(jax.random.PRNGKey(0), x, False))
  y = block.apply(v, x, False)
  assert y.shape == x.shape
  # Zeroing both output projections leaves only the residual path.
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.zeros_like(a) if any(getattr(k, "key", "") in ("wo", "w2") for k in path)
      else a, v)
  np.testing.assert_allclose(block.apply(zeroed, x, False), x, rtol=1e-6)


def test_decoder_block_keeps_the_double_residual():
  mc = _tiny_cfg()
  block = transformer.DecoderBlock(mc)
  rng = np.random.RandomState(1)
  x = rng.randn(2, 5, mc.d_model).astype(np.float32)
  memory = rng.randn(2, 49, mc.d_model).astype(np.float32)
  v = nn.meta.unbox(block.init(jax.random.PRNGKey(0), x, memory, None, False))
  y, stats = block.apply(v, x, memory, None, False)
  assert y.shape == x.shape and stats["load"].shape == (mc.num_experts,)
  # With every output projection zeroed (self-attention, cross-attention, fusion MLP, experts),
  # the stream is x + (x + 0 + 0): the block's residual plus GatedFusion's inner one.
  names = ("wo", "fusion_out", "w2")
  zeroed = jax.tree_util.tree_map_with_path(
      lambda path, a: jnp.zeros_like(a) if any(getattr(k, "key", "") in names for k in path)
      else a, v)
  y0, _ = block.apply(zeroed, x, memory, None, False)
  np.testing.assert_allclose(y0, 2 * x, rtol=1e-6)
