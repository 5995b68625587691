"""GatedFusion against a numpy statement of the reference's forward pass."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from micar_jax.config import defaults
from micar_jax.models import attention, fusion
from micar_jax.models import model as model_lib


def rms(x, w):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * w


def silu(x):
  return x / (1 + np.exp(-x))


def test_gated_fusion_matches_reference_math_with_inner_residual():
  mc = dataclasses.replace(
      model_lib.ModelConfig.from_config(defaults.tiny(defaults.base_config()), 11),
      d_model=8, d_latent=16, num_heads=2, qk_nope_dim=4, qk_rope_dim=4, act_fn="silu",
      attention_dropout=0.0, dropout=0.0)
  gf = fusion.GatedFusion(mc)
  rng = np.random.RandomState(0)
  x = rng.randn(2, 3, 8).astype(np.float32)
  img = rng.randn(2, 5, 8).astype(np.float32)
  v = nn.meta.unbox(gf.init(jax.random.PRNGKey(0), x, img, False))
  p = jax.tree.map(np.asarray, v["params"])
  # Give the norms non-trivial weights so their placement matters.
  for name in ("norm1", "norm2", "norm3"):
    p[name]["scale"] = rng.rand(8).astype(np.float32) + 0.5
  y = np.asarray(gf.apply({"params": p}, x, img, False))

  # The cross-attention itself is tested in test_attention.py.
  cross = attention.LatentCrossAttention(mc)
  nx, ni = rms(x, p["norm1"]["scale"]), rms(img, p["norm2"]["scale"])
  attended = np.asarray(cross.apply({"params": p["cross_attention"]}, jnp.asarray(nx),
                                    jnp.asarray(ni), False)) + x
  dense = lambda h, name: h @ p[name]["kernel"] + p[name]["bias"]
  global_img = dense(np.concatenate([ni.mean(1, keepdims=True), ni.max(1, keepdims=True)], -1),
                     "global_proj")
  na = rms(attended, p["norm3"]["scale"])
  gate = 1 / (1 + np.exp(-dense(silu(dense(np.concatenate([na, nx], -1), "gate_in")), "gate_out")))
  gated = gate * na + (1 - gate) * nx
  combined = np.concatenate([gated, na, np.broadcast_to(global_img, na.shape)], -1)
  want = dense(silu(dense(combined, "fusion_in")), "fusion_out") + attended
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
