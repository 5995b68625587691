"""Tests for micar_jax.models.block_layout: the scanned ResNet computes what the per-block one
does, and the layouts convert into each other exactly."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from micar_jax.models import block_layout, resnet
from micar_jax.models.model_config import ModelConfig

# Stage 1 (2 blocks) and stage 3 (1 block) stay unscanned; stages 2 and 4 scan 2 and 3 blocks.
STAGES = (2, 3, 1, 4)
WIDTH = 8
MC = ModelConfig(vocab_size=10, max_len=8, stage_sizes=STAGES, num_views=1, resnet_width=WIDTH)


def _tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.shape(x) == np.shape(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def resnets():
  """(unscanned model, scanned model, unscanned variables with distinct BN statistics, images)."""
  # 64 px, 4 images: stage 4's BatchNorm sees 16 values per channel. With fewer
  # (2 at 32 px) its normalised output hardly depends on its input and the
  # gradients are rounding noise on either side.
  images = jax.random.normal(jax.random.PRNGKey(1), (4, 64, 64, 3))
  plain = resnet.ResNet(STAGES, WIDTH, scan_blocks=False)
  scanned = resnet.ResNet(STAGES, WIDTH, scan_blocks=True)
  variables = nn.meta.unbox(plain.init(jax.random.PRNGKey(0), images, False))
  # Running statistics that differ per block, so a misplaced block would show.
  leaves, treedef = jax.tree.flatten(variables["batch_stats"])
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  stats = [x + 0.1 * jnp.abs(jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]
  variables = dict(variables, batch_stats=jax.tree.unflatten(treedef, stats))
  return plain, scanned, variables, images


def test_only_stages_of_three_or_more_blocks_scan(resnets):
  plain, scanned, variables, images = resnets
  assert block_layout.scanned_stages(MC) == {2, 4}
  boxed = scanned.init(jax.random.PRNGKey(0), images, False)
  names = set(boxed["params"])
  assert {"stage2_blocks", "stage4_blocks", "stage1_block1", "stage2_block0"} <= names
  assert not {"stage2_block1", "stage4_block3"} & names
  kernel = boxed["params"]["stage4_blocks"]["conv2"]["kernel"]
  # The stacked axis is logically unnamed, so it is never sharded.
  assert kernel.names == (None, None, None, "conv_in", "conv_out")
  assert kernel.value.shape == (3, 3, 3, 8 * WIDTH, 8 * WIDTH)
  assert boxed["batch_stats"]["stage2_blocks"]["bn3"]["var"].names == (None, "conv_out")
  # 9 arrays per stacked block group instead of 9 per block.
  count = lambda v: len(jax.tree.leaves(v["params"]))
  assert count(variables) - count(nn.meta.unbox(boxed)) == 9 * (1 + 2)
  # Stages of one or two blocks (the tiny configs' (1, 1, 1, 1)) never scan.
  tiny = ModelConfig(vocab_size=10, max_len=8, stage_sizes=(1, 2, 1, 1), num_views=1)
  assert block_layout.scanned_stages(tiny) == frozenset()


@pytest.mark.parametrize("train", [False, True])
def test_scanned_resnet_matches_the_per_block_one(resnets, train):
  plain, scanned, variables, images = resnets
  # Jitted, as a train step runs them (op by op, the scan body alone would be fused).
  run = lambda model, v: jax.jit(lambda v: model.apply(v, images, train,
                                                        mutable=["batch_stats"]))(v)
  out_plain, new_plain = run(plain, variables)
  out_scan, new_scan = run(scanned, block_layout.stack(variables, MC))
  for a, b in zip(out_plain, out_scan):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
  new_scan = block_layout.unstack(new_scan, MC)
  assert jax.tree.structure(new_scan) == jax.tree.structure(new_plain)
  for a, b in zip(jax.tree.leaves(new_plain), jax.tree.leaves(new_scan)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)


def test_gradients_agree_after_unstacking(resnets):
  plain, scanned, variables, images = resnets

  def grads(model, v):
    def loss(params):
      out, _ = model.apply(dict(v, params=params), images, True, mutable=["batch_stats"])
      return sum(jnp.mean(jnp.square(f)) for f in out)
    return jax.jit(jax.grad(loss))(v["params"])

  g_plain = grads(plain, variables)
  g_scan = block_layout.unstack(grads(scanned, block_layout.stack(variables, MC)))
  assert jax.tree.structure(g_scan) == jax.tree.structure(g_plain)
  # The backward pass sums in another order: equal to float32 rounding of each leaf's scale.
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_scan)):
    scale = max(float(jnp.max(jnp.abs(a))), 1.0)
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5 * scale)


def test_stack_and_unstack_are_exact_inverses(resnets):
  _, _, variables, _ = resnets
  host = jax.tree.map(np.asarray, variables)
  stacked = block_layout.stack(host, MC)
  kernels = stacked["params"]["stage4_blocks"]["conv1"]["kernel"]
  for i in range(3):
    np.testing.assert_array_equal(kernels[i], host["params"][f"stage4_block{i + 1}"]["conv1"]["kernel"])
  _tree_equal(block_layout.unstack(stacked), host)
  _tree_equal(block_layout.stack(block_layout.unstack(stacked), MC), stacked)
  # Idempotent both ways, and layouts follow a target's.
  _tree_equal(block_layout.stack(stacked, MC), stacked)
  _tree_equal(block_layout.unstack(host), host)
  _tree_equal(block_layout.relayout(host, stacked), stacked)
  _tree_equal(block_layout.relayout(stacked, host), host)
  assert block_layout.stages_of(stacked) == {2, 4} and not block_layout.stages_of(host)


def test_optimizer_moments_and_abstract_targets_follow(resnets):
  _, _, variables, _ = resnets
  params = {"vis_enc": {"backbone": variables["params"]}, "other": {"w": jnp.ones(3)}}
  tx = optax.partition({"v": optax.adam(1.0), "r": optax.sgd(1.0)},
                       lambda p: {"vis_enc": "v", "other": "r"})
  state = {"params": params, "opt_state": tx.init(params)}
  stacked = block_layout.stack(state, MC)
  # The masked-out moments (no arrays under the group) keep their structure.
  assert jax.tree.structure(stacked["opt_state"]) == jax.tree.structure(
      tx.init(stacked["params"]))
  _tree_equal(block_layout.unstack(stacked), state)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stacked)
  unstacked = block_layout.unstack(abstract)
  assert jax.tree.map(lambda a: a.shape, unstacked) == jax.tree.map(np.shape, state)
  assert jax.tree.map(lambda a: a.shape, block_layout.relayout(unstacked, abstract)) == \
      jax.tree.map(lambda a: a.shape, abstract)
