"""One process per workdir: a second holder is refused by name; a killed holder leaves no lock."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from micar_jax import errors
from micar_jax.training import workdir_lock

HOLDER = ("import sys, time\n"
          "from micar_jax.training import workdir_lock\n"
          "with workdir_lock.hold(sys.argv[1], 'train'):\n"
          "  print('held', flush=True)\n"
          "  time.sleep(600)\n")


def start_holder(workdir):
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE,
                          text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_second_process_is_refused_with_the_holders_pid_and_host(tmp_path):
  proc = start_holder(tmp_path)
  try:
    with pytest.raises(errors.UserError) as e:
      with workdir_lock.hold(str(tmp_path), "test"):
        pass
    message = str(e.value)
    assert "\n" not in message
    assert f"pid {proc.pid}" in message and socket.gethostname() in message
    assert "train" in message
  finally:
    proc.kill()
    proc.wait()


def test_sigkill_of_the_holder_leaves_no_stale_lock(tmp_path):
  proc = start_holder(tmp_path)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  with workdir_lock.hold(str(tmp_path), "train"):
    pass
  assert os.path.exists(workdir_lock.lock_path(str(tmp_path), 0))


def test_the_lock_is_released_at_the_end_of_the_block(tmp_path):
  with workdir_lock.hold(str(tmp_path), "predict"):
    pass
  with workdir_lock.hold(str(tmp_path), "explain"):
    pass


def test_each_process_index_has_its_own_lock(tmp_path):
  with workdir_lock.hold(str(tmp_path), "train", process_index=0):
    with workdir_lock.hold(str(tmp_path), "train", process_index=1):
      assert sorted(os.listdir(tmp_path)) == [".lock.0", ".lock.1"]
    with pytest.raises(errors.UserError, match="in use"):
      with workdir_lock.hold(str(tmp_path), "train", process_index=0):
        pass


def test_holder_names_the_live_holder_without_taking_the_lock(tmp_path):
  assert workdir_lock.holder(str(tmp_path)) is None  # no lock file: nobody, and none is made
  assert not os.listdir(tmp_path)
  proc = start_holder(tmp_path)
  try:
    info = workdir_lock.holder(str(tmp_path))
    assert info["pid"] == proc.pid and info["mode"] == "train"
    assert info["host"] == socket.gethostname()
    # Asking took nothing: the holder keeps it and a second writer is still refused.
    with pytest.raises(errors.UserError, match="in use by train"):
      with workdir_lock.hold(str(tmp_path), "test"):
        pass
  finally:
    proc.kill()
    proc.wait()
  # SIGKILL leaves the record but not the process: no holder.
  assert workdir_lock.holder(str(tmp_path)) is None
  with workdir_lock.hold(str(tmp_path), "test"):
    assert workdir_lock.holder(str(tmp_path))["mode"] == "test"
  assert workdir_lock.holder(str(tmp_path)) is None
