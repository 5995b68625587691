"""RMSNorm, BatchNorm (PyTorch statistics), activations, SwiGLU and initialisers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from micar_jax import errors
from micar_jax.models import layers


def test_rmsnorm_matches_formula():
  x = np.random.RandomState(0).randn(2, 3, 8).astype(np.float32)
  norm = layers.RMSNorm()
  v = norm.init(jax.random.PRNGKey(0), x)
  want = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(norm.apply(v, x), want, rtol=1e-5)


def test_batchnorm_train_uses_biased_and_updates_unbiased_var():
  x = np.random.RandomState(1).randn(4, 3, 3, 5).astype(np.float32)
  bn = layers.BatchNorm()
  v = nn.meta.unbox(bn.init(jax.random.PRNGKey(0), x, train=False))
  y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-5)
  n = 4 * 3 * 3
  np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  y_eval = bn.apply({**v, **upd}, x, train=False)
  stats = upd["batch_stats"]
  np.testing.assert_allclose(y_eval, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5), atol=1e-5)


@pytest.mark.parametrize("name,fn", [
    ("silu", lambda x: x / (1 + np.exp(-x))),
    ("gelu", lambda x: 0.5 * x * (1 + special.erf(x / np.sqrt(2)))),
    ("selu", lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x))),
    ("telu", lambda x: x * np.tanh(np.exp(x))),
])
def test_activations_match_definitions(name, fn):
  x = np.linspace(-4, 4, 33).astype(np.float32)
  np.testing.assert_allclose(layers.activation(name)(x), fn(x), rtol=1e-5, atol=1e-6)


def test_unknown_activation_is_a_clear_error():
  with pytest.raises(errors.ConfigError, match="unknown activation 'relu6'"):
    layers.activation("relu6")


def test_dense_init_bounds_follow_the_reference():
  dense = layers.Dense(300, ("embed", "mlp"), use_bias=True)
  params = nn.meta.unbox(dense.init(jax.random.PRNGKey(0), jnp.zeros((1, 200))))["params"]
  kernel, bias = np.asarray(params["kernel"]), np.asarray(params["bias"])
  xavier = np.sqrt(6.0 / (200 + 300))
  assert kernel.shape == (200, 300) and np.abs(kernel).max() <= xavier
  assert np.abs(kernel).max() > 0.9 * xavier
  assert np.abs(bias).max() <= 1 / np.sqrt(200) and np.abs(bias).max() > 0.9 / np.sqrt(200)


def test_swiglu_shape_and_formula():
  ff = layers.SwiGLU(16, "silu", 0.0)
  x = np.random.RandomState(2).randn(2, 5, 8).astype(np.float32)
  v = nn.meta.unbox(ff.init(jax.random.PRNGKey(0), x, train=False))
  p = v["params"]
  h = x @ p["w1"]["kernel"]
  want = ((h / (1 + np.exp(-h))) * (x @ p["w3"]["kernel"])) @ p["w2"]["kernel"]
  np.testing.assert_allclose(ff.apply(v, x, train=False), want, rtol=1e-4, atol=1e-5)
