"""Latent attention: RoPE formula, head layouts, masks, dropout, KV-cache decoding."""

import dataclasses
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from micar_jax.config import defaults
from micar_jax.models import attention
from micar_jax.models import model as model_lib


def numpy_rope(x, positions, rope_dim, theta=10000.0):
  """The reference's rotation written out: pairs (2j, 2j+1), j < rope_dim // 4."""
  out = x.copy()
  dim = rope_dim // 2
  for j in range(dim // 2):
    freq = theta ** (-2.0 * j / dim)
    for s, p in enumerate(positions):
      c, si = np.cos(p * freq), np.sin(p * freq)
      a, b = x[..., s, 2 * j], x[..., s, 2 * j + 1]
      out[..., s, 2 * j] = a * c - b * si
      out[..., s, 2 * j + 1] = b * c + a * si
  return out


def test_rope_matches_numpy_statement_and_rotates_only_a_quarter():
  x = np.random.RandomState(0).randn(2, 3, 7, 48).astype(np.float32)
  positions = np.arange(7)
  got = np.asarray(attention.apply_rope(jnp.asarray(x), jnp.asarray(positions), 48, 10000.0))
  np.testing.assert_allclose(got, numpy_rope(x, positions, 48), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got[..., 24:], x[..., 24:])
  np.testing.assert_array_equal(got[..., 0, :], x[..., 0, :])  # position 0 is the identity


def test_rope_frequencies_are_the_reference_values():
  np.testing.assert_allclose(attention.rope_frequencies(48, 10000.0),
                             10000.0 ** (-np.arange(0, 24, 2) / 24), rtol=1e-6)



# rotary-embedding-torch 0.8.6's RotaryEmbedding(dim=24).freqs under torch 2.14.1, as
# float32 bits: the reference's qk_rope_dim = 48 (every dataset config).
_REFERENCE_FREQS_48 = (0x3f800000, 0x3eeda63c, 0x3e5c9d35, 0x3dcccccd, 0x3d3e1e95, 0x3cb07dc6,
                       0x3c23d70a, 0x3b98187a, 0x3b0d3169, 0x3a83126f, 0x39f35a5c, 0x3961e8a7)


def test_rope_frequencies_equal_the_reference_bit_for_bit():
  freqs = attention.rope_frequencies(48, 10000.0)
  assert freqs.dtype == np.float32
  assert tuple(int(b) for b in freqs.view(np.uint32)) == _REFERENCE_FREQS_48

# In a fresh process: jax_enable_x64 is process-wide.
_JIT_VS_EAGER = textwrap.dedent("""
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    from micar_jax.models import attention
    x = jnp.asarray(np.random.RandomState(0).randn(2, 4, 80, 64))
    pos = jnp.arange(80)
    eager = attention.apply_rope(x, pos, 64, 10000.0)
    jitted = jax.jit(attention.apply_rope, static_argnums=(2, 3))(x, pos, 64, 10000.0)
    print(float(jnp.max(jnp.abs(eager - jitted))))
""")


def test_rope_is_the_same_jitted_and_op_by_op_in_float64():
  # Frequencies written with jnp were folded by XLA's own float32 pow under jit and
  # differed in the last bit from the op-by-op values (and the reference's): ~1e-7
  # in float64 RoPE output, which the float64 train-step parity showed as 4e-11 in
  # the full-size loss.
  out = subprocess.run([sys.executable, "-c", _JIT_VS_EAGER], capture_output=True, text=True,
                       timeout=120, check=True).stdout
  assert float(out) < 1e-13


def test_split_is_head_minor_and_merge_is_head_major():
  x = jnp.arange(2 * 12, dtype=jnp.float32).reshape(1, 2, 12)  # 3 heads x 4 dims
  heads = attention.split_heads(x, 3)
  assert heads.shape == (1, 3, 2, 4)
  np.testing.assert_array_equal(heads[0, 1, 0], [1, 4, 7, 10])  # channel c -> head c % 3
  merged = attention.merge_heads(heads)
  np.testing.assert_array_equal(merged[0, 0], [0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11])


def _cfg(**overrides):
  """The tiny ModelConfig narrowed to 2 heads of 4 + 4 channels over width 8, no dropout."""
  mc = model_lib.ModelConfig.from_config(defaults.tiny(defaults.base_config()), 11)
  dims = dict(num_heads=2, d_latent=16, qk_nope_dim=4, qk_rope_dim=4, d_model=8,
              attention_dropout=0.0)
  return dataclasses.replace(mc, **{**dims, **overrides})


def _self_attention(decode=False, **overrides):
  return attention.LatentSelfAttention(_cfg(**overrides), decode)


def test_self_attention_shapes_and_mask_semantics():
  x = np.random.RandomState(1).randn(2, 5, 8).astype(np.float32)
  sa = _self_attention()
  v = nn.meta.unbox(sa.init(jax.random.PRNGKey(0), x, None, False))
  causal = jnp.tril(jnp.ones((5, 5), bool))[None, None]
  y = sa.apply(v, x, causal, False)
  assert y.shape == (2, 5, 8)
  x2 = x.copy()
  x2[:, 3:] = 100.0  # future tokens must not change earlier outputs
  y2 = sa.apply(v, x2, causal, False)
  np.testing.assert_allclose(y[:, :3], y2[:, :3], atol=1e-5)
  assert not np.allclose(y[:, 3:], y2[:, 3:])
  # A masked key gets weight exp(-1e9) = 0: equal to dropping it.
  keep = jnp.asarray([True, True, False, True, True])
  mask = causal & keep[None, None, None, :]
  y3 = sa.apply(v, x, mask, False)
  x4 = x.copy()
  x4[:, 2] = -50.0
  np.testing.assert_allclose(y3[:, 3:], sa.apply(v, x4, mask, False)[:, 3:], atol=1e-5)


def test_bad_head_dims_are_a_clear_error():
  sa = _self_attention(d_latent=18)
  try:
    sa.init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 8)), None, False)
  except ValueError as e:
    assert "must split into 2 heads" in str(e)
  else:
    raise AssertionError("expected ValueError")


def test_attention_dropout_only_in_train():
  x = np.random.RandomState(2).randn(1, 4, 8).astype(np.float32)
  sa = _self_attention(attention_dropout=0.5)
  v = nn.meta.unbox(sa.init(jax.random.PRNGKey(0), x, None, False))
  a = sa.apply(v, x, None, False)
  np.testing.assert_allclose(a, sa.apply(v, x, None, False))
  b = sa.apply(v, x, None, True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(a, b)


def test_cached_self_attention_equals_causal_full_pass():
  x = np.random.RandomState(3).randn(2, 6, 8).astype(np.float32)
  full = _self_attention()
  v = nn.meta.unbox(full.init(jax.random.PRNGKey(0), x, None, False))
  want = full.apply(v, x, jnp.tril(jnp.ones((6, 6), bool))[None, None], False)
  step = _self_attention(decode=True, max_len=6)
  cache = step.init(jax.random.PRNGKey(0), x[:, :1], None, False, jnp.int32(0))["cache"]
  outs = []
  for t in range(6):
    y, upd = step.apply({**v, "cache": cache}, x[:, t:t + 1], None, False, jnp.int32(t),
                        mutable=["cache"])
    cache = upd["cache"]
    outs.append(y)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, atol=1e-5)


def test_cross_attention_has_no_mask_and_uses_text_positions():
  ca = attention.LatentCrossAttention(_cfg())
  x = np.random.RandomState(4).randn(2, 3, 8).astype(np.float32)
  mem = np.random.RandomState(5).randn(2, 5, 8).astype(np.float32)
  v = nn.meta.unbox(ca.init(jax.random.PRNGKey(0), x, mem, False))
  y = ca.apply(v, x, mem, False)
  assert y.shape == (2, 3, 8)
  # The same query row at text position 2 equals a single-row call given position 2.
  single = ca.apply(v, x[:, 2:3], mem, False, jnp.int32(2))
  np.testing.assert_allclose(single, y[:, 2:3], atol=1e-5)
  same_row = np.repeat(x[:, :1], 3, axis=1)
  y_same = ca.apply(v, same_row, mem, False)
  assert not np.allclose(y_same[:, 0], y_same[:, 2])  # rope on queries makes positions differ
