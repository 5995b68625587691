"""The train step's finite flag: a non-finite step leaves the state as it was, only the step advances."""

import jax
import numpy as np
import pytest

from micar_jax.config import defaults
from micar_jax.core import sharding
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.training import optim, steps

VOCAB = 11


def batch(nan_images=False):
  rng = np.random.RandomState(0)
  ids = rng.randint(1, VOCAB, size=(2, 8)).astype(np.int32)
  images = rng.randn(2, 32, 32, 3).astype(np.float32)
  if nan_images:  # data-level corruption: one pixel of one row
    images[1, 5, 5, 0] = np.nan
  return {"images": images, "input_ids": ids, "pad_mask": np.ones_like(ids),
          "labels": np.roll(ids, -1, axis=1)}


@pytest.fixture(scope="module")
def step_and_state():
  config = defaults.tiny(defaults.base_config())
  config.data.text_seq_len = 8
  mc = model_lib.ModelConfig.from_config(config, VOCAB)
  tx = optim.make_optimizer(config, 10)
  init = state_lib.make_init_fn(mc, tx, batch_spec.BatchSpec.from_config(config, batch_size=2))
  state = jax.jit(lambda rng: sharding.unbox(init(rng)))(jax.random.PRNGKey(0))
  return jax.jit(steps.make_train_step(mc, tx, config)), state


def test_a_finite_step_is_applied(step_and_state):
  step, state = step_and_state
  new, metrics = step(state, batch())
  assert bool(metrics["finite"])
  assert int(new.step) == 1
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                      jax.tree.leaves(new.params)))


def test_a_nan_in_the_data_is_flagged_and_not_applied(step_and_state):
  step, state = step_and_state
  new, metrics = step(state, batch(nan_images=True))
  assert not bool(metrics["finite"]) and not np.isfinite(metrics["loss"])
  assert int(new.step) == 1
  for name in ("params", "batch_stats", "opt_state"):
    for a, b in zip(jax.tree.leaves(getattr(state, name)), jax.tree.leaves(getattr(new, name))):
      np.testing.assert_array_equal(a, b, err_msg=name)


def test_all_finite_sees_one_bad_element_and_ignores_integer_leaves():
  tree = {"a": np.zeros(3, np.float32), "n": np.array(7, np.int32)}
  assert bool(steps.all_finite(tree))
  tree["a"][1] = np.inf
  assert not bool(steps.all_finite(tree))
