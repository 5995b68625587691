"""Tests for micar_jax.core.checkpointing: a full disk during a save is one error, nothing lost;
a checkpoint restores into either ResNet block layout."""

import logging
import os
import subprocess
import sys

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax import errors
from micar_jax.core import checkpointing, sharding
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.models import block_layout, model_config, partitioning
from micar_jax.training import optim


@pytest.fixture
def tiny_disk(tmp_path):
  """A 2 MiB tmpfs (needs root); the test is skipped where it cannot be mounted."""
  mount = tmp_path / "disk"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                        capture_output=True, text=True, check=False)
  if done.returncode:
    pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})")
  yield mount
  subprocess.run(["umount", str(mount)], check=False)


def _iterator(consumed):
  it = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(consumed):
    next(it)
  return it


def test_disk_full_during_save_is_one_error_and_the_previous_checkpoint_resumes(
    tiny_disk, caplog, capfd):
  workdir = str(tiny_disk / "run")
  small = {"w": jnp.arange(1000, dtype=jnp.float32)}
  ckpts = checkpointing.Checkpoints(workdir)
  ckpts.save_latest(10, small, _iterator(3), {"epoch": 0})
  # 4 MB of incompressible floats cannot fit in what is left of 2 MiB.
  big = {"w": jax.random.normal(jax.random.PRNGKey(0), (1_000_000,))}
  with caplog.at_level(logging.WARNING), pytest.raises(checkpointing.DiskFullError) as caught:
    ckpts.save_latest(20, big, _iterator(5), {"epoch": 1})
  message = str(caught.value)
  assert isinstance(caught.value, errors.UserError) and "\n" not in message
  assert "No space left on device" in message and "step 10 is intact" in message
  logged = caplog.text + "".join(capfd.readouterr())
  assert "Traceback" not in logged and "raised an exception" not in logged
  latest = os.path.join(workdir, "checkpoints", "latest")
  assert sorted(os.listdir(latest)) == ["10"]  # the partial step-20 folder is gone
  ckpts.close()

  it = _iterator(0)
  state, meta = checkpointing.Checkpoints(workdir).restore_latest(
      checkpointing.abstract_like(small), it)
  np.testing.assert_array_equal(state["w"], small["w"])
  assert meta == {"epoch": 0} and next(it) == 3


def _two_steps(workdir):
  """Latest checkpoints of steps 10 and 20 (distinct values), closed."""
  ckpts = checkpointing.Checkpoints(workdir)
  for step in (10, 20):
    w = jax.random.normal(jax.random.PRNGKey(step), (4096,))
    ckpts.save_latest(step, {"w": w}, _iterator(step // 10), {"epoch": step})
  ckpts.close()
  return {"w": jnp.zeros((4096,), jnp.float32)}


def _largest_state_file(workdir, step):
  root = os.path.join(workdir, "checkpoints", "latest", str(step), "state")
  files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def _bit_rot(path):
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(os.urandom(min(4096, os.path.getsize(path) // 2)))


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [_bit_rot, _truncate])
def test_a_damaged_step_is_reported_and_the_older_intact_one_resumes(tmp_path, damage, capfd):
  workdir = str(tmp_path / "run")
  abstract = checkpointing.abstract_like(_two_steps(workdir))
  assert os.path.exists(os.path.join(workdir, "checkpoints", "latest", "20",
                                     checkpointing.CHECKSUMS))
  damage(_largest_state_file(workdir, 20))
  ckpts = checkpointing.Checkpoints(workdir)
  it = _iterator(0)
  state, meta = ckpts.restore_latest(abstract, it)
  np.testing.assert_array_equal(state["w"], jax.random.normal(jax.random.PRNGKey(10), (4096,)))
  assert meta == {"epoch": 10} and next(it) == 1 and ckpts.intact_step == 10 and ckpts.unverified_step is None
  assert len(ckpts.unusable) == 1 and ckpts.unusable[0].startswith("latest/20: ")
  assert "Traceback" not in "".join(capfd.readouterr())


def test_no_intact_step_is_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  abstract = checkpointing.abstract_like(_two_steps(workdir))
  for step in (10, 20):
    _bit_rot(_largest_state_file(workdir, step))
  with pytest.raises(checkpointing.CorruptCheckpointError) as caught:
    checkpointing.Checkpoints(workdir).restore_latest(abstract, _iterator(0))
  message = str(caught.value)
  assert isinstance(caught.value, errors.UserError) and "\n" not in message
  assert "latest/20:" in message and "latest/10:" in message


def test_a_step_saved_before_checksums_restores_unverified(tmp_path):
  workdir = str(tmp_path / "run")
  abstract = checkpointing.abstract_like(_two_steps(workdir))
  os.remove(os.path.join(workdir, "checkpoints", "latest", "20", checkpointing.CHECKSUMS))
  ckpts = checkpointing.Checkpoints(workdir)
  state, meta = ckpts.restore_latest(abstract, _iterator(0))
  assert meta == {"epoch": 20} and ckpts.intact_step == ckpts.unverified_step == 20
  assert not ckpts.unusable


def test_a_damaged_best_checkpoint_is_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  ckpts = checkpointing.Checkpoints(workdir)
  variables = {"params": {"w": jnp.ones((4096,))}}
  ckpts.save_best(5, variables, {"score": 0.5})
  ckpts.close()
  best = os.path.join(workdir, "checkpoints", "best", "5", "state")
  path = max((os.path.join(d, f) for d, _, fs in os.walk(best) for f in fs), key=os.path.getsize)
  _bit_rot(path)
  with pytest.raises(checkpointing.CorruptCheckpointError, match="no intact best checkpoint"):
    checkpointing.Checkpoints(workdir).restore_best(checkpointing.abstract_like(variables))


# A program that saves a state of many arrays into a workdir through the command line's tail.
_MANY_ARRAYS_SCRIPT = """
import sys
import grain, jax
from micar_jax import cli
from micar_jax.core import checkpointing

def main(argv):
  state = {f"w{i}": jax.random.normal(jax.random.PRNGKey(i), (20_000,)) for i in range(345)}
  data_iter = iter(grain.MapDataset.range(10).to_iter_dataset())
  checkpointing.Checkpoints(argv[1]).save_latest(1, state, data_iter, {"epoch": 0})

cli.run(main)
"""


def test_a_save_that_fills_the_disk_prints_the_one_error_line_and_nothing_else(tiny_disk):
  # A failed save of many arrays leaves hundreds of TensorStore writes behind on a closed
  # event loop; none of their reports may reach the console.
  out = subprocess.run([sys.executable, "-c", _MANY_ARRAYS_SCRIPT, str(tiny_disk / "run")],
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Event loop is closed" not in out.stderr and "Traceback" not in out.stderr, (
      out.stderr[-3000:])
  lines = [l for l in out.stderr.splitlines() if not l.startswith("I")]  # Orbax's INFO log
  assert len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith("error: saving the latest checkpoint of step 1 failed: No space "
                             "left on device")


def _train_state(config, scan_blocks, mesh):
  """A sharded TrainState of `config`'s model with every leaf distinct (moments included)."""
  config.model.scan_blocks = scan_blocks
  mc = model_config.ModelConfig.from_config(config, 20)
  spec = batch_spec.BatchSpec(1, 32, mc.num_views, mc.max_len)
  init = state_lib.make_init_fn(mc, optim.make_optimizer(config, 10), spec)
  state, _ = sharding.init_sharded(init, mesh, partitioning.logical_rules(), jax.random.PRNGKey(0))
  return mc, state


def test_a_checkpoint_of_per_block_resnet_variables_restores_into_a_scanned_model(
    tmp_path, load_config):
  config = load_config("configs/synthetic.py:tiny")
  config.model.resnet_stages = (1, 3, 1, 1)  # stage 2 scans its blocks 1 and 2
  config.mesh.fsdp = 2
  mesh = sharding.make_mesh(config, jax.devices()[:2])
  mc, state = _train_state(config, False, mesh)
  # Distinct values everywhere, so a block restored in another's place would show.
  leaves, treedef = jax.tree.flatten(state)
  leaves = [x + jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) * (i + 1)
            for i, x in enumerate(leaves)]
  state = jax.tree.unflatten(treedef, leaves)
  ckpts = checkpointing.Checkpoints(str(tmp_path))
  ckpts.save_latest(4, state, _iterator(2), {"epoch": 0})
  ckpts.save_best(4, state.variables(), {"score": 1.0})
  ckpts.close()

  scanned_mc, scanned = _train_state(config, True, mesh)
  # Layouts only: a run may switch scan_blocks (compute-only) and keep its workdir.
  assert checkpointing.run_config_of(scanned_mc) == checkpointing.run_config_of(mc)
  abstract = checkpointing.abstract_like(scanned)
  assert block_layout.stages_of(abstract) == {2} and not block_layout.stages_of(state)
  ckpts = checkpointing.Checkpoints(str(tmp_path))
  restored, meta = ckpts.restore_latest(abstract, _iterator(0))
  best, _ = ckpts.restore_best(checkpointing.abstract_like(scanned.variables()))
  ckpts.close()
  assert meta == {"epoch": 0}
  for got, target in ((restored, abstract), (best, abstract.variables())):
    assert jax.tree.structure(got) == jax.tree.structure(target)
    for x, a in zip(jax.tree.leaves(got), jax.tree.leaves(target)):
      assert (x.shape, x.dtype, x.sharding) == (a.shape, a.dtype, a.sharding)
  want = jax.tree.map(np.asarray, state)
  for got, expected in ((restored, want), (best, want.variables())):
    got = block_layout.unstack(jax.tree.map(np.asarray, got))
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(x, y)

  # Another config is still refused in one line before any restore.
  checkpointing.check_run_config(str(tmp_path), checkpointing.run_config_of(mc))
  config.model.resnet_stages = (1, 2, 1, 1)
  other, _ = _train_state(config, True, mesh)
  with pytest.raises(errors.UserError, match="incompatible config .*stage_sizes"):
    checkpointing.check_run_config(str(tmp_path), checkpointing.run_config_of(other))
