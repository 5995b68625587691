"""Mesh construction, logical rules on the tiny model, sharded init and batch assembly."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.core import sharding
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.models import moe, partitioning


def config_of(**sizes):
  c = defaults.tiny(defaults.base_config())
  for axis in partitioning.MESH_AXES:
    c.mesh[axis] = sizes.get(axis, 1)
  return c


def test_make_mesh_fills_minus_one_with_auto_axes():
  mesh = sharding.make_mesh(config_of(data=-1, expert=4))
  assert mesh.axis_names == partitioning.MESH_AXES
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "expert": 4, "tensor": 1}
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  one = sharding.make_mesh(config_of(data=-1), devices=jax.devices()[:1])
  assert one.size == 1


@pytest.mark.parametrize("sizes, message", [
    (dict(data=2, expert=2), "needs 4 devices, but 8 are available"),
    (dict(data=-1, fsdp=3), "does not divide 8 devices"),
    (dict(data=-1, fsdp=-1), "one of them may be -1"),
    (dict(data=0, fsdp=8), "sizes must be positive"),
])
def test_make_mesh_rejects_sizes_that_do_not_fit(sizes, message):
  with pytest.raises(errors.ConfigError, match=message) as info:
    sharding.make_mesh(config_of(**sizes))
  assert "\n" not in str(info.value)


def test_resolve_spec_falls_back_when_an_axis_does_not_divide():
  mesh = sharding.make_mesh(config_of(data=2, fsdp=2, tensor=2))
  rules = partitioning.logical_rules()
  # V = 229 is odd: vocab stays replicated, embed takes fsdp.
  assert partitioning.resolve_spec(("vocab", "embed"), (229, 32), rules, mesh) == P(None, "fsdp")
  # conv_in = 3 cannot take fsdp, so conv_out (a later rule) gets it.
  assert partitioning.resolve_spec((None, None, "conv_in", "conv_out"), (7, 7, 3, 8), rules,
                               mesh) == P(None, None, None, "fsdp")
  # A batch of 2 keeps the largest dividing prefix of ("data", "fsdp", "expert").
  assert partitioning.resolve_spec(("batch", None), (2, 5), rules, mesh) == P("data", None)
  assert partitioning.resolve_spec(("batch", None), (4, 5), rules, mesh) == P(
      ("data", "fsdp", "expert"), None)
  # Unknown names and None are replicated.
  assert partitioning.resolve_spec(("other", None), (4, 4), rules, mesh) == P(None, None)


@pytest.fixture(scope="module")
def tiny_abstract_state():
  config = config_of(fsdp=2, expert=2, tensor=2)
  mc = model_lib.ModelConfig.from_config(config, 229)
  init = state_lib.make_init_fn(mc, optax.adamw(1e-3), batch_spec.BatchSpec.from_config(config))
  mesh = sharding.make_mesh(config)
  rules = partitioning.logical_rules()
  with partitioning.use_mesh(mesh, rules):
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
  return abstract, sharding.state_shardings(abstract, mesh, rules), mesh


def test_rules_on_representative_tiny_model_params(tiny_abstract_state):
  _, shardings, _ = tiny_abstract_state
  params = shardings.params
  assert params["vis_enc"]["fusion"]["conv"]["kernel"].spec == P(None, None, "fsdp", None)
  assert params["vis_enc"]["backbone"]["stem_conv"]["kernel"].spec == P(None, None, None, "fsdp")
  assert params["decoder_0"]["moe"]["w1"].spec == P("expert", "fsdp", "tensor")
  assert params["decoder_0"]["moe"]["w2"].spec == P("expert", "tensor", "fsdp")
  assert params["text_embs"]["embedding"].spec == P(None, "fsdp")
  assert params["gen_logits"]["kernel"].spec == P("fsdp", None)
  assert params["encoder_0"]["ff"]["w1"]["kernel"].spec == P("fsdp", "tensor")
  assert params["encoder_0"]["self_attention"]["qkv_up"]["kernel"].spec == P("fsdp", "tensor")


def test_every_spec_is_valid_for_its_shape(tiny_abstract_state):
  abstract, shardings, mesh = tiny_abstract_state
  shapes = sharding.unbox(abstract)
  assert jax.tree.structure(shapes) == jax.tree.structure(shardings)
  as_tuple = lambda entry: (entry,) if isinstance(entry, str) else tuple(entry or ())
  for shape, named in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
    used = [a for entry in named.spec for a in as_tuple(entry)]
    assert len(used) == len(set(used)), named.spec
    for dim, entry in zip(shape.shape, named.spec):
      assert dim % int(np.prod([mesh.shape[a] for a in as_tuple(entry)])) == 0
  # The optimizer state follows its parameters.
  adam = shardings.opt_state[0]
  assert adam.mu["decoder_0"]["moe"]["w1"].spec == P("expert", "fsdp", "tensor")
  assert adam.count.spec == P()


def moe_init_fn(tx):
  tiny = model_lib.ModelConfig.from_config(defaults.tiny(defaults.base_config()), 11)
  layer = moe.MoE(dataclasses.replace(tiny, num_experts=4, top_k=2, d_ff=16, act_fn="silu",
                                      dropout=0.0, moe_impl="sort"))

  def init(rng):
    params = layer.init(rng, jnp.zeros((2, 3, 8)), False)["params"]
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}

  return init


def test_init_sharded_creates_sharded_unboxed_state():
  tx = optax.adamw(1e-3)
  init = moe_init_fn(tx)
  mesh = sharding.make_mesh(config_of(fsdp=2, expert=4))
  rules = partitioning.logical_rules()
  state, shardings = sharding.init_sharded(init, mesh, rules, jax.random.PRNGKey(3))
  w1 = state["params"]["w1"]
  assert isinstance(w1, jax.Array)
  assert w1.sharding.spec == P("expert", "fsdp", "tensor") == shardings["params"]["w1"].spec
  # Each device holds one of the 4 x 2 blocks of [4, 8, 16] (tensor has size 1).
  assert {s.data.shape for s in w1.addressable_shards} == {(1, 4, 16)}
  assert state["opt_state"][0].mu["w1"].sharding.spec == P("expert", "fsdp", "tensor")
  assert state["step"].sharding.is_fully_replicated
  plain = nn.meta.unbox(init(jax.random.PRNGKey(3)))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(a, b)
  abstract = sharding.abstract_sharded(init, mesh, rules, jax.random.PRNGKey(3))
  for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
    assert a.shape == s.shape and a.sharding == s.sharding


def test_global_batch_splits_rows_over_the_batch_axes():
  mesh = sharding.make_mesh(config_of(data=2, expert=2, tensor=2))
  ids = np.arange(8 * 3, dtype=np.int32).reshape(8, 3)
  batch = sharding.global_batch({"input_ids": ids}, mesh)
  assert batch["input_ids"].sharding == sharding.batch_sharding(mesh)
  assert batch["input_ids"].sharding.spec == P(("data", "fsdp", "expert"))
  # 4 batch shards, each replicated over the 2 tensor devices.
  assert {s.data.shape for s in batch["input_ids"].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(batch["input_ids"], ids)
  assert sharding.replicated(mesh).is_fully_replicated
  with pytest.raises(errors.ConfigError,
                     match="6 rows does not split over the mesh's 4 batch shards"):
    sharding.global_batch({"input_ids": ids[:6]}, mesh)
