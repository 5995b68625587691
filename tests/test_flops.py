"""FLOP counting from jaxprs: dots, convolutions, ragged dots (active experts only)."""

import jax
import jax.numpy as jnp

from micar_jax.config import defaults
from micar_jax.core import summary
from micar_jax.models import flops
from micar_jax.models import model as model_lib


def test_dot_conv_and_nested_jit():
  a, b = jnp.ones((4, 8)), jnp.ones((8, 3))
  assert flops.count_flops(lambda a, b: jax.jit(jnp.dot)(a, b), a, b) == 2 * 4 * 8 * 3
  x = jnp.ones((2, 10, 10, 3))
  k = jnp.ones((3, 3, 3, 5))
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert flops.count_flops(conv, x, k) == 2 * (2 * 10 * 10 * 5) * 9 * 3


def test_ragged_dot_counts_each_row_once():
  lhs, rhs = jnp.ones((6, 4)), jnp.ones((3, 4, 5))
  sizes = jnp.asarray([2, 3, 1], jnp.int32)
  assert flops.count_flops(lambda l, r: jax.lax.ragged_dot(l, r, sizes), lhs, rhs) == 2 * 6 * 4 * 5


def test_a_scan_body_counts_once_per_iteration():
  def f(x, w):
    return jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=5)[0]
  assert flops.count_flops(f, jnp.ones((4, 8)), jnp.ones((8, 8))) == 5 * 2 * 4 * 8 * 8


def test_mmr_model_is_about_793_gflop_per_trained_image():
  c = defaults.base_config()
  mc = model_lib.ModelConfig.from_config(c, 2046)
  model = model_lib.MicarVLMoE(mc)
  variables = summary.abstract_variables(mc)
  images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, 60), jnp.int32)
  forward = flops.count_flops(lambda v, x, t: model.apply(v, x, t, None), variables, images, ids)
  # The fusion conv alone: 2 x 2048 x 2048 x 9 x 56 x 56 = 236.8 GFLOP.
  assert 260e9 < forward < 270e9
  assert abs(3 * forward - 793e9) / 793e9 < 0.01
