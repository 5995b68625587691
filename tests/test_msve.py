"""MSVE: torch-equivalent bilinear upsampling and adaptive pooling, shapes."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax.config import defaults
from micar_jax.models import model as model_lib
from micar_jax.models import msve


def test_bilinear_matrix_matches_hand_values():
  # torch: F.interpolate([a, b], size=4, mode="linear", align_corners=False)
  # gives [a, .75a + .25b, .25a + .75b, b].
  np.testing.assert_allclose(msve.bilinear_matrix(4, 2),
                             [[1, 0], [.75, .25], [.25, .75], [0, 1]])
  # x8 from 1 pixel replicates it.
  np.testing.assert_allclose(msve.bilinear_matrix(8, 1), np.ones((8, 1)))
  # Rows always sum to one.
  np.testing.assert_allclose(msve.bilinear_matrix(56, 7).sum(1), 1, rtol=1e-6)
  # x8 (7 -> 56): output 4 sits at source (4.5 / 8) - 0.5 = 0.0625.
  np.testing.assert_allclose(msve.bilinear_matrix(56, 7)[4, :2], [0.9375, 0.0625], rtol=1e-6)


def test_adaptive_pool_bins_follow_torch():
  m = msve.adaptive_pool_matrix(7, 56)
  np.testing.assert_allclose(m, np.kron(np.eye(7), np.ones((1, 8)) / 8))
  # 8 -> 7 overlaps bins: bin i covers floor(8i/7) .. ceil(8(i+1)/7).
  m = msve.adaptive_pool_matrix(7, 8)
  np.testing.assert_allclose(m[0], [.5, .5, 0, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(m[3], [0, 0, 0, .5, .5, 0, 0, 0])


def test_msve_tokens_shape_and_raster_order():
  mc = model_lib.ModelConfig.from_config(defaults.tiny(defaults.base_config()), 11)
  enc = msve.MSVE(dataclasses.replace(mc, stage_sizes=(1, 1, 1, 1), resnet_width=8, d_v=16,
                                      pool_size=7))
  x = np.random.RandomState(0).randn(2, 32, 32, 3).astype(np.float32)
  v = nn.meta.unbox(enc.init(jax.random.PRNGKey(0), x, train=False))
  tokens = enc.apply(v, x, train=False)
  assert tokens.shape == (2, 49, 16)
  _, upd = enc.apply(v, x, train=True, mutable=["batch_stats"])
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), v["batch_stats"], upd["batch_stats"])
  assert all(jax.tree.leaves(changed))


def test_resize_2d_applies_both_axes():
  x = jnp.arange(4.0).reshape(1, 2, 2, 1)
  y = msve.upsample(x, (4, 4))
  np.testing.assert_allclose(y[0, :, 0, 0], [0, .5, 1.5, 2])
  np.testing.assert_allclose(y[0, 0, :, 0], [0, .25, .75, 1])


RESIZES = [  # (matrix, input [h, w], output [h, w]): every path of resize_axis
    (msve.bilinear_matrix, (7, 7), (56, 56)),  # integer upsampling: shifted slices
    (msve.bilinear_matrix, (1, 2), (8, 4)),
    (msve.bilinear_matrix, (3, 5), (5, 9)),  # any other size: gathered nonzeros
    (msve.bilinear_matrix, (6, 13), (4, 25)),
    (msve.adaptive_pool_matrix, (56, 16), (7, 8)),  # whole windows: reshaped mean
    (msve.adaptive_pool_matrix, (8, 25), (7, 7)),  # overlapping windows
    (msve.adaptive_pool_matrix, (3, 3), (7, 7)),
]


@pytest.mark.parametrize("matrix_fn,in_hw,out_hw", RESIZES)
def test_resize_applies_the_torch_matrices_and_their_transpose(matrix_fn, in_hw, out_hw):
  rng = np.random.RandomState(0)
  x = (3 * rng.randn(2, *in_hw, 5) + 1).astype(np.float32)
  mh, mw = matrix_fn(out_hw[0], in_hw[0]), matrix_fn(out_hw[1], in_hw[1])
  y, vjp = jax.vjp(lambda x: msve.resize_2d(x, matrix_fn, out_hw), jnp.asarray(x))
  want = np.einsum("oh,pw,bhwc->bopc", mh, mw, x.astype(np.float64))
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(y, want, rtol=0, atol=1e-6 * np.abs(want).max())
  cotangent = rng.randn(*want.shape).astype(np.float32)
  (grad,) = vjp(jnp.asarray(cotangent))
  want_grad = np.einsum("oh,pw,bopc->bhwc", mh, mw, cotangent.astype(np.float64))
  np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-6 * np.abs(want_grad).max())


def test_resize_and_pool_keep_channels_minor_without_matmuls():
  # A matrix einsum makes skinny matmuls over b·w·c rows and transposes the activation.
  x = jnp.zeros((2, 7, 7, 16), jnp.bfloat16)
  fused = jnp.zeros((2, 56, 56, 16), jnp.bfloat16)

  def f(x, fused):
    up = msve.upsample(x, (56, 56))
    pooled = msve.resize_2d(fused + up, msve.adaptive_pool_matrix, (7, 7))
    return jnp.sum(pooled.astype(jnp.float32) ** 2)

  hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, fused).as_text()
  assert "dot_general" not in hlo and "transpose" not in hlo
  assert msve.upsample(x, (56, 56)).dtype == jnp.bfloat16
