"""Tests for micar_jax.core.checkpointing: a full disk during a save is one error, nothing lost."""

import logging
import os
import subprocess

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax import errors
from micar_jax.core import checkpointing


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
