"""Training on 8 simulated devices: every mesh gives the one-device step, run and checkpoints.

Dropout stays on: its masks are drawn outside any shard_map with partitionable
threefry, so they do not depend on the mesh. No token is dropped (dropless
capacity), so expert parallelism computes exactly what one device does.
"""

import json
import os

import jax
import numpy as np
import pytest

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.core import sharding
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning
from micar_jax.training import optim, run_logging, steps, train

VOCAB = 29
BATCH, SEQ = 8, 12


def step_config(impl="sort", **sizes):
  c = defaults.tiny(defaults.base_config())
  c.model.moe_impl = impl
  c.data.text_seq_len = SEQ
  for axis in partitioning.MESH_AXES:
    c.mesh[axis] = sizes.get(axis, 1)
  return c


def host_batch():
  rng = np.random.RandomState(0)
  ids = rng.randint(1, VOCAB, size=(BATCH, SEQ)).astype(np.int32)
  ids[:, -3:] = 0
  return {"images": rng.randn(BATCH, 32, 32, 3).astype(np.float32), "input_ids": ids,
          "pad_mask": (ids != 0).astype(np.int32), "labels": np.roll(ids, -1, axis=1)}


def first_moments(opt_state):
  """AdamW's m after one update is (1 - β1)·grad: the gradients, leaf by leaf."""
  return [leaf / (1 - optim.BETAS[0]) for path, leaf in jax.tree_util.tree_leaves_with_path(
      opt_state) if ".mu" in jax.tree_util.keystr(path)]


def one_train_step(impl, devices=None, **sizes):
  """One jitted train step from the same initial state: (new state, metrics) on the host."""
  config = step_config(impl, **sizes)
  mc = model_lib.ModelConfig.from_config(config, VOCAB)
  tx = optim.make_optimizer(config, 10)
  init = state_lib.make_init_fn(mc, tx, batch_spec.BatchSpec.from_config(config))
  mesh = sharding.make_mesh(config, devices)
  rules = partitioning.logical_rules()
  state, shardings = sharding.init_sharded(init, mesh, rules, jax.random.PRNGKey(0))
  with partitioning.use_mesh(mesh, rules):
    step = jax.jit(steps.make_train_step(mc, tx, config),
                   in_shardings=(shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(shardings, None))
    new_state, metrics = step(state, sharding.global_batch(host_batch(), mesh))
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def one_device_step():
  return one_train_step("sort", jax.devices()[:1])


@pytest.mark.parametrize("impl, sizes", [
    ("expert_parallel", dict(data=2, expert=4)),
    pytest.param("sort", dict(data=8), marks=pytest.mark.slow),
    pytest.param("expert_parallel", dict(fsdp=2, expert=4), marks=pytest.mark.slow),
])
def test_train_step_matches_one_device(one_device_step, impl, sizes):
  want_state, want = one_device_step
  got_state, got = one_train_step(impl, **sizes)
  assert not np.any(got["dropped_fraction"])
  for key in ("loss", "ce", "aux_loss", "grad_norm"):
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
  want_grads, got_grads = first_moments(want_state.opt_state), first_moments(got_state.opt_state)
  assert len(want_grads) == len(jax.tree.leaves(want_state.params))
  # Cross-device sums reorder float32 additions: near-zero entries get an absolute slack.
  scale = max(float(np.abs(g).max()) for g in want_grads)
  for w, g in zip(want_grads, got_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4 * scale)
  # AdamW's first update is ±lr per weight whatever the gradient's size, so a
  # noise-level gradient (e.g. a conv bias in front of BatchNorm, analytically
  # zero) may flip sign: updated weights differ by at most 2·lr there.
  lr = max(step_config().train.lr, step_config().train.v_lr)
  for w, g in zip(jax.tree.leaves(want_state.params), jax.tree.leaves(got_state.params)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2 * lr)
  for w, g in zip(jax.tree.leaves(want_state.batch_stats), jax.tree.leaves(got_state.batch_stats)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_eval_batches_are_padded_to_the_batch_shards():
  mesh = sharding.make_mesh(step_config(data=2, expert=4))
  batch = {"images": np.ones((3, 2), np.float32), "valid": np.ones(3, bool)}
  out = sharding.global_batch(batch, mesh, pad=True)
  assert out["images"].shape == (8, 2)
  np.testing.assert_array_equal(out["valid"], [True] * 3 + [False] * 5)
  np.testing.assert_array_equal(out["images"][3:], 0.0)
  with pytest.raises(errors.ConfigError, match="does not split over the mesh's 8 batch shards"):
    sharding.global_batch(batch, mesh)


@pytest.fixture
def run_config(tmp_path, tiny_config):
  """run_config(impl="sort", num_devices=1, **mesh_sizes) -> a 20-step tiny config."""
  def make(impl="sort", num_devices=1, **sizes):
    c = tiny_config(tmp_path)
    c.data.synthetic_sizes = (160, 8, 8)
    c.data.text_seq_len = SEQ
    c.model.moe_impl = impl
    c.train.batch_size = 8
    # Does not divide the 8 batch shards: evaluation pads its batches.
    c.eval.batch_size = 4
    # The tiny config's rate, not the synthetic one's 1e-3: AdamW turns float-noise gradient
    # differences into ±lr steps, which a large rate amplifies over 20 steps.
    c.train.lr = c.train.v_lr = 1e-4
    c.train.epochs = 1
    c.train.max_steps = 20
    c.train.checkpoint_every = 4
    c.mesh.num_devices = num_devices
    for axis in partitioning.MESH_AXES:
      c.mesh[axis] = sizes.get(axis, 1)
    return c
  return make


def train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(l["step"], l["loss"]) for l in map(json.loads, f) if "loss" in l]


@pytest.mark.slow
def test_training_run_logs_the_same_losses_on_a_mesh(tmp_path, run_config):
  train.train_and_evaluate(run_config(), str(tmp_path / "one"))
  train.train_and_evaluate(
      run_config("expert_parallel", 8, data=2, expert=4), str(tmp_path / "mesh"))
  want, got = train_losses(tmp_path / "one"), train_losses(tmp_path / "mesh")
  assert [s for s, _ in want] == [s for s, _ in got] == list(range(1, 21))
  np.testing.assert_allclose([l for _, l in got], [l for _, l in want], rtol=1e-4)


class _Kill(Exception):
  pass


@pytest.mark.slow
def test_checkpoint_of_one_mesh_resumes_on_another(tmp_path, monkeypatch, run_config):
  workdir = str(tmp_path / "run")
  real_log = run_logging.RunLog.train

  def killing(self, step, *args):
    real_log(self, step, *args)
    if step == 5:  # After the checkpoint of step 4; step 5 is lost.
      raise _Kill()

  monkeypatch.setattr(run_logging.RunLog, "train", killing)
  with pytest.raises(_Kill):
    train.train_and_evaluate(run_config("sort", 8, data=8), workdir)
  monkeypatch.setattr(run_logging.RunLog, "train", real_log)
  config = run_config("expert_parallel", 8, fsdp=2, expert=4)
  config.train.max_steps = 8
  out = train.train_and_evaluate(config, workdir)
  assert out["num_examples"] == 8
  steps_logged = train_losses(workdir)
  assert [s for s, _ in steps_logged] == [1, 2, 3, 4, 5, 5, 6, 7, 8]
  # Step 5 ran twice from the step-4 checkpoint: on data=8, then on fsdp=2 x expert=4.
  np.testing.assert_allclose(steps_logged[5][1], steps_logged[4][1], rtol=1e-4)
  latest = os.path.join(workdir, "checkpoints", "latest")
  assert max(int(d) for d in os.listdir(latest) if d.isdigit()) == 8
