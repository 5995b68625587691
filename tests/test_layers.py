"""RMSNorm, BatchNorm (PyTorch statistics), activations, SwiGLU and initialisers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.core import sharding
from micar_jax.models import layers, partitioning


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


def mesh_config(**sizes):
  c = defaults.base_config()
  for axis in partitioning.MESH_AXES:
    c.mesh[axis] = sizes.get(axis, 1)
  return c


def two_pass_batchnorm(x, scale, bias, eps=1e-5):
  """The textbook train-mode BatchNorm: mean, then the mean squared deviation."""
  mean = jnp.mean(x, axis=(0, 1, 2))
  var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


@pytest.mark.parametrize("offset", [0.0, 30.0, 1000.0])
@pytest.mark.parametrize("batch_shards", [1, 4])
def test_batchnorm_one_pass_statistics_are_as_precise_as_two_pass(offset, batch_shards):
  # Channel means of `offset` times N(0, 1) against a unit spread: an unshifted one pass
  # E[x²] - E[x]² would lose log10(offset²) digits of the variance (all of them at 1000).
  rng = np.random.RandomState(3)
  x = (rng.randn(4, 6, 6, 8) + offset * rng.randn(8)).astype(np.float32)
  bn = layers.BatchNorm()
  stats = nn.meta.unbox(bn.init(jax.random.PRNGKey(0), x, train=False))["batch_stats"]
  scale, bias = 1 + rng.rand(8).astype(np.float32), rng.randn(8).astype(np.float32)
  ours = lambda x, scale, bias: bn.apply({"params": {"scale": scale, "bias": bias},
                                         "batch_stats": stats}, x, train=True,
                                        mutable=["batch_stats"])[0]
  mesh = sharding.make_mesh(mesh_config(data=batch_shards), jax.devices()[:batch_shards])

  def loss_and_grads(norm):
    loss = lambda *args: jnp.sum(jnp.sin(norm(*args)))
    with partitioning.use_mesh(mesh, partitioning.logical_rules()):  # a group per batch shard
      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(x, scale, bias)

  # Float64 truth in numpy (jax computes float32 without jax_enable_x64).
  x64 = x.astype(np.float64)
  inv_std = 1 / np.sqrt(x64.var((0, 1, 2)) + 1e-5)
  x_hat = (x64 - x64.mean((0, 1, 2))) * inv_std
  dy = np.cos(x_hat * scale + bias)
  exact = (np.sum(np.sin(x_hat * scale + bias)),
           scale * inv_std * (dy - dy.mean((0, 1, 2)) - x_hat * (dy * x_hat).mean((0, 1, 2))),
           np.sum(dy * x_hat, (0, 1, 2)), np.sum(dy, (0, 1, 2)))
  errors = {}
  for name, norm in (("ours", ours), ("two-pass", two_pass_batchnorm)):
    loss, grads = loss_and_grads(norm)
    errors[name] = [np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()
                    for a, b in zip((loss, *grads), exact)]
  for ours_error, two_pass_error in zip(errors["ours"], errors["two-pass"]):
    assert ours_error <= max(1.5 * two_pass_error, 4e-6), errors  # 4e-6: float32 noise
