"""Sparse MoE against a dense per-expert loop; capacity, drops and auxiliary losses."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.models import layers, model_config, moe, routing

E, K, D, F = 4, 2, 8, 16


def dense_loop(params, x, combine, act="silu"):
  """The reference's computation: every expert on every token, masked inputs."""
  tokens = x.reshape(-1, D)
  logits = tokens @ params["router"]
  probs, gates, ids = routing.route(logits, K)
  act_fn = layers.activation(act)
  out = jnp.zeros_like(tokens)
  for e in range(E):
    chosen = jnp.any(ids == e, axis=-1, keepdims=True).astype(tokens.dtype)
    weight = chosen if combine == "sum" else jnp.sum(jnp.where(ids == e, gates, 0.0), -1,
                                                     keepdims=True)
    h = act_fn(tokens @ params["w1"][e]) * (tokens @ params["w3"][e])
    out = out + (h @ params["w2"][e]) * weight
  return out.reshape(x.shape)


def make(combine="sum", impl="sort", capacity_factor=-1.0, aux="entropy"):
  tiny = model_config.ModelConfig.from_config(defaults.tiny(defaults.base_config()), 11)
  layer = moe.MoE(dataclasses.replace(
      tiny, num_experts=E, top_k=K, d_ff=F, act_fn="silu", dropout=0.0, moe_combine=combine,
      moe_aux_loss=aux, capacity_factor=capacity_factor, moe_impl=impl))
  x = jnp.asarray(np.random.RandomState(0).randn(3, 5, D).astype(np.float32))
  params = nn.meta.unbox(layer.init(jax.random.PRNGKey(1), x, False))["params"]
  return layer, params, x


@pytest.mark.parametrize("impl", ["sort", "einsum"])
@pytest.mark.parametrize("combine", ["sum", "weighted"])
def test_sparse_equals_dense_loop_outputs_and_gradients(impl, combine):
  layer, params, x = make(combine, impl)
  y, stats = layer.apply({"params": params}, x, False)
  np.testing.assert_allclose(y, dense_loop(params, x, combine), rtol=1e-5, atol=1e-5)
  assert float(stats["dropped"]) == 0.0

  def loss_sparse(p, x):
    return jnp.sum(jnp.sin(layer.apply({"params": p}, x, False)[0]))

  def loss_dense(p, x):
    return jnp.sum(jnp.sin(dense_loop(p, x, combine)))

  gs = jax.grad(loss_sparse, argnums=(0, 1))(params, x)
  gd = jax.grad(loss_dense, argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(gs), jax.tree.leaves(gd)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_sum_combine_gives_router_no_gradient_from_the_output():
  layer, params, x = make("sum")
  g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x, False)[0] ** 2))(params)
  assert float(jnp.abs(g["router"]).max()) == 0.0
  layer_w, params_w, _ = make("weighted")
  g = jax.grad(lambda p: jnp.sum(layer_w.apply({"params": p}, x, False)[0] ** 2))(params_w)
  assert float(jnp.abs(g["router"]).max()) > 0.0


@pytest.mark.parametrize("impl", ["sort", "einsum"])
def test_capacity_drops_exactly_the_overflow(impl):
  layer, params, x = make("sum", impl, capacity_factor=0.5)
  n = x.shape[0] * x.shape[1]
  capacity = routing.expert_capacity(n, K, E, 0.5)
  y, stats = layer.apply({"params": params}, x, False)
  tokens = x.reshape(-1, D)
  _, _, ids = routing.route(tokens @ params["router"], K)
  keep = np.asarray(routing.capacity_positions(ids, E) < capacity)
  assert np.isclose(float(stats["dropped"]), 1 - keep.mean())
  assert float(stats["dropped"]) > 0
  # Expected: dense loop where dropped (token, expert) pairs contribute nothing.
  act = layers.activation("silu")
  want = np.zeros_like(tokens)
  for t in range(n):
    for j in range(K):
      if keep[t, j]:
        e = int(ids[t, j])
        h = act(tokens[t] @ params["w1"][e]) * (tokens[t] @ params["w3"][e])
        want[t] += np.asarray(h @ params["w2"][e])
  np.testing.assert_allclose(y.reshape(-1, D), want, rtol=1e-5, atol=1e-5)


def test_load_is_reported_per_expert():
  layer, params, x = make()
  _, stats = layer.apply({"params": params}, x, False)
  assert stats["load"].shape == (E,)
  np.testing.assert_allclose(float(jnp.sum(stats["load"])), 1.0, rtol=1e-6)


def test_sows_the_experts_it_routed_each_token_to():
  layer, params, x = make()
  _, sown = layer.apply({"params": params}, x, False, mutable=[routing.COLLECTION])
  (experts,) = sown[routing.COLLECTION][routing.EXPERTS]
  _, _, ids = routing.route(x.reshape(-1, D) @ params["router"], K)
  np.testing.assert_array_equal(experts, np.asarray(ids).reshape(x.shape[0], x.shape[1], K))


def test_every_impl_is_in_the_dispatch_table_and_others_are_errors():
  assert set(moe.DISPATCH) == {"sort", "einsum", "expert_parallel"}
  layer, params, x = make()
  with pytest.raises(errors.ConfigError, match="unknown moe_impl 'dense'"):
    layer.clone(cfg=dataclasses.replace(layer.cfg, moe_impl="dense")).apply({"params": params}, x, False)
  with pytest.raises(errors.ConfigError, match="unknown moe_combine 'max'"):
    layer.clone(cfg=dataclasses.replace(layer.cfg, moe_combine="max")).apply({"params": params}, x, False)
