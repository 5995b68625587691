"""Batch-sharded MoE on 8 simulated devices against the one-device MoE: the per-shard
sort and einsum dispatches, and expert parallelism."""

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.core import sharding
from micar_jax.models import model as model_lib
from micar_jax.models import moe, partitioning

E, K, D, F = 4, 2, 8, 16


def mesh_of(devices=None, **sizes):
  c = defaults.base_config()
  for axis in partitioning.MESH_AXES:
    c.mesh[axis] = sizes.get(axis, 1)
  return sharding.make_mesh(c, devices)


def layer(impl, combine="sum", capacity_factor=-1.0, dropout=0.0):
  tiny = model_lib.ModelConfig.from_config(defaults.tiny(defaults.base_config()), 11)
  return moe.MoE(dataclasses.replace(
      tiny, num_experts=E, top_k=K, d_ff=F, act_fn="silu", dropout=dropout, moe_combine=combine,
      capacity_factor=capacity_factor, moe_impl=impl))


def inputs(batch=8, tokens=5):
  x = jnp.asarray(np.random.RandomState(0).randn(batch, tokens, D).astype(np.float32))
  params = nn.meta.unbox(layer("sort").init(jax.random.PRNGKey(1), x, False))["params"]
  return params, x


def loss_and_stats(module, params, x):
  y, stats = module.apply({"params": params}, x, False)
  return jnp.sum(jnp.sin(y)) + stats["aux"], (y, stats)


def grad_fn(module):
  return jax.grad(lambda p, x: loss_and_stats(module, p, x), argnums=(0, 1), has_aux=True)


def assert_trees_close(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


MESHES = {
    "data8": dict(data=8),
    "data2_expert4": dict(data=2, expert=4),
    "fsdp2_expert4": dict(fsdp=2, expert=4),
    "expert4_tensor2": dict(expert=4, tensor=2),
}


@pytest.mark.parametrize("combine", ["sum", "weighted"])
@pytest.mark.parametrize("mesh_name", list(MESHES) + ["one_device"])
def test_matches_one_device_outputs_aux_and_gradients(mesh_name, combine):
  params, x = inputs()
  if mesh_name == "one_device":
    mesh = mesh_of(jax.devices()[:1])
  else:
    mesh = mesh_of(**MESHES[mesh_name])
  with partitioning.use_mesh(mesh, partitioning.logical_rules()):
    grads, (y, stats) = jax.jit(grad_fn(layer("expert_parallel", combine)))(params, x)
  assert float(stats["dropped"]) == 0.0
  for impl in ("sort", "einsum"):
    ref_grads, (ref_y, ref_stats) = jax.jit(grad_fn(layer(impl, combine)))(params, x)
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)
    for key in ("aux", "z", "load"):
      np.testing.assert_allclose(stats[key], ref_stats[key], rtol=1e-5)
    assert_trees_close(grads, ref_grads)


@pytest.mark.parametrize("impl", ["expert_parallel", "sort", "einsum"])
def test_token_count_not_divisible_by_the_shards_is_padded(impl):
  params, x = inputs(batch=3, tokens=5)  # 15 tokens over 8 shards
  with partitioning.use_mesh(mesh_of(data=2, expert=4), partitioning.logical_rules()):
    grads, (y, stats) = jax.jit(grad_fn(layer(impl)))(params, x)
  ref_grads, (ref_y, _) = jax.jit(grad_fn(layer("sort")))(params, x)
  np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-6)
  assert_trees_close(grads, ref_grads)
  assert float(stats["dropped"]) == 0.0


def test_dropout_masks_depend_on_the_rng_only():
  params, x = inputs()

  def run(impl, seed):
    module = layer(impl, dropout=0.5)
    return module.apply({"params": params}, x, True, rngs={"dropout": jax.random.PRNGKey(seed)})[0]

  with partitioning.use_mesh(mesh_of(data=2, expert=4), partitioning.logical_rules()):
    sharded = jax.jit(run, static_argnums=(0, 1))
    a, b, c = sharded("expert_parallel", 0), sharded("expert_parallel", 0), sharded(
        "expert_parallel", 1)
    clean = jax.jit(lambda: layer("expert_parallel").apply({"params": params}, x, False)[0])()
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert not np.allclose(a, clean)
  # The same masks as every one-device impl: dropout is applied outside the shard_map.
  for impl in ("sort", "einsum"):
    np.testing.assert_allclose(a, jax.jit(run, static_argnums=(0, 1))(impl, 0), rtol=1e-5,
                               atol=1e-6)


def test_forward_backward_uses_four_all_to_alls():
  params, x = inputs()
  f = lambda p, x: loss_and_stats(layer("expert_parallel"), p, x)[0]
  with partitioning.use_mesh(mesh_of(data=2, expert=4), partitioning.logical_rules()):
    hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(params, x).compile().as_text()
  # Dispatch and return forward, and their transposes backward.
  assert len(re.findall(r"\sall-to-all\(", hlo)) == 4


def test_errors_without_a_mesh_or_with_indivisible_experts():
  params, x = inputs()
  module = layer("expert_parallel")
  with pytest.raises(ValueError, match="needs a mesh"):
    module.apply({"params": params}, x, False)
  with partitioning.use_mesh(mesh_of(expert=8), partitioning.logical_rules()):
    with pytest.raises(errors.ConfigError, match="num_experts=4 does not split"):
      module.apply({"params": params}, x, False)


@pytest.mark.parametrize("impl", ["sort", "einsum"])
@pytest.mark.parametrize("mesh_name", MESHES)
def test_per_shard_dispatch_equals_one_device(impl, mesh_name):
  params, x = inputs()
  ref_grads, (ref_y, ref_stats) = jax.jit(grad_fn(layer(impl)))(params, x)
  with partitioning.use_mesh(mesh_of(**MESHES[mesh_name]), partitioning.logical_rules()):
    grads, (y, stats) = jax.jit(grad_fn(layer(impl)))(params, x)
  if "tensor" in mesh_name:  # d_ff split over "tensor": partial outputs summed in another order
    np.testing.assert_allclose(y, ref_y, rtol=1e-6, atol=1e-6)
  else:  # each token's rows are computed as on one device
    np.testing.assert_array_equal(y, ref_y)
  for key in ("aux", "z", "load", "dropped"):
    np.testing.assert_allclose(stats[key], ref_stats[key], rtol=1e-6)
  assert_trees_close(grads, ref_grads)


def test_every_dispatch_counts_capacity_per_batch_shard_and_drops_are_counted():
  params, x = inputs(batch=8, tokens=6)
  cf = 0.5
  outs = {}
  with partitioning.use_mesh(mesh_of(data=2, expert=4), partitioning.logical_rules()):
    for impl in ("sort", "einsum", "expert_parallel"):
      outs[impl] = jax.jit(lambda p, x, impl=impl: layer(impl, capacity_factor=cf).apply(
          {"params": p}, x, False))(params, x)
  # Each shard holds one sequence: the one-device MoE on that sequence alone.
  per_shard = [layer("sort", capacity_factor=cf).apply({"params": params}, x[i:i + 1], False)
               for i in range(8)]
  expected_dropped = np.mean([float(p[1]["dropped"]) for p in per_shard])
  assert expected_dropped > 0.0
  for y, stats in outs.values():
    np.testing.assert_allclose(y, jnp.concatenate([p[0] for p in per_shard]), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(float(stats["dropped"]), expected_dropped, rtol=1e-6)


def test_sort_under_data8_sorts_only_its_shard_and_gathers_no_rows():
  params, x = inputs(batch=8, tokens=6)
  rows = 8 * 6 * K  # global token-expert rows
  f = jax.grad(lambda p, x: loss_and_stats(layer("sort"), p, x)[0], argnums=(0, 1))
  with partitioning.use_mesh(mesh_of(data=8), partitioning.logical_rules()):
    hlo = jax.jit(f).lower(params, x).compile().as_text()
  # The dispatch's row ops: the sorted rows gathered from the tokens [rows, 1, D] and the
  # grouped matmuls' outputs [rows, F] / [rows, D], forward and backward.
  dispatch = "\n".join(line for line in hlo.splitlines() if "/shard_map/" in line)
  gathered = re.findall(rf"= \w+\[(\d+),1,{D}\]\S* gather\(", dispatch)
  matmuls = re.findall(rf"= f32\[(\d+),(?:{D}|{F})\]\S* dot\(", dispatch)
  assert len(gathered) >= 2 and len(matmuls) >= 6
  assert {int(r) for r in gathered + matmuls} == {rows // 8}
  # No global gather: not of the tokens, nor of the router probabilities for top-k.
  assert " all-gather(" not in hlo


@pytest.mark.slow
def test_tiny_model_logits_match_sort_impl():
  config = defaults.tiny(defaults.base_config())
  mc = model_lib.ModelConfig.from_config(config, 29)
  ep_config = defaults.tiny(defaults.base_config())
  ep_config.model.moe_impl = "expert_parallel"
  ep_mc = model_lib.ModelConfig.from_config(ep_config, 29)
  rng = np.random.RandomState(2)
  images = jnp.asarray(rng.randn(8, 32, 32, 3).astype(np.float32))
  ids = jnp.asarray(rng.randint(1, 29, size=(8, mc.max_len)).astype(np.int32))
  variables = nn.meta.unbox(jax.jit(model_lib.MicarVLMoE(mc).init)(
      jax.random.PRNGKey(0), images, ids))
  ref_logits, ref_stats = jax.jit(lambda v: model_lib.MicarVLMoE(mc).apply(
      v, images, ids, None, False))(variables)
  mesh = mesh_of(data=2, expert=4)
  with partitioning.use_mesh(mesh, partitioning.logical_rules()):
    logits, stats = jax.jit(lambda v: model_lib.MicarVLMoE(ep_mc).apply(
        v, images, ids, None, False))(variables)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["aux"], ref_stats["aux"], rtol=1e-5)
