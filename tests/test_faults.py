"""Faults on the tiny config: kills, interrupts, divergence, two runs on one workdir, step limits.

Each case ends in a clear one-line message, a counted skip, or a run that resumes
to the same parameters and test scores as an uninterrupted run. The command-line
runs are slow (each compiles the tiny model) and marked so.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from micar_jax.training import workdir_lock

CLI = [sys.executable, "-m", "micar_jax.main"]


def args_for(data, workdir, *extra):
  return ["--config=configs/synthetic.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={data}", "--config.data.synthetic_sizes=(16,8,4)",
          "--config.data.text_seq_len=12", "--config.train.epochs=2",
          "--config.train.log_every=1", "--config.train.checkpoint_every=2",
          "--config.eval.suites=('reference',)", "--config.mesh.num_devices=1", *extra]


def run_cli(*args, timeout=900):
  return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


def start_cli(*args):
  return subprocess.Popen(CLI + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def last_line(stderr):
  """The last stderr line that is not absl logging (I/W prefixed) or compiler chatter."""
  lines = [l for l in stderr.strip().splitlines() if l.startswith(("error:", "interrupted"))]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def assert_no_traceback(out):
  assert "Traceback" not in out.stderr, out.stderr[-3000:]


def saved_steps(workdir, kind="latest"):
  root = os.path.join(workdir, "checkpoints", kind)
  return sorted(int(d) for d in os.listdir(root) if d.isdigit()) if os.path.isdir(root) else []


def latest_params(workdir):
  step = saved_steps(workdir)[-1]
  path = os.path.join(workdir, "checkpoints", "latest", str(step), "state")
  return step, ocp.StandardCheckpointer().restore(path)["params"]


def assert_same_run(workdir, want):
  """Same final step, bitwise-equal parameters and equal test scores as `want`."""
  want_step, want_params = latest_params(want)
  got_step, got_params = latest_params(workdir)
  assert got_step == want_step
  for a, b in zip(jax.tree.leaves(want_params), jax.tree.leaves(got_params)):
    np.testing.assert_array_equal(a, b)
  scores = lambda d: json.load(open(os.path.join(d, "test", "scores.json")))
  assert scores(workdir) == scores(want)


def logged_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l)["step"] for l in f if '"loss"' in l]


def wait_for(predicate, proc, timeout=600, poll=0.05):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if predicate():
      return True
    time.sleep(poll)
  return False


def test_a_second_run_on_a_held_workdir_is_one_line_naming_the_holder(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with workdir_lock.hold(str(workdir), "train"):
    out = run_cli(*args_for(tmp_path / "data", workdir, "--mode=test"), timeout=300)
  assert out.returncode == 2
  line = last_line(out.stderr)
  assert f"pid {os.getpid()}" in line and "in use by train" in line


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run: (data dir, workdir)."""
  root = tmp_path_factory.mktemp("straight")
  data, workdir = root / "data", root / "run"
  out = run_cli(*args_for(data, workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  return data, str(workdir)


@pytest.mark.slow
def test_sigkill_during_an_orbax_save_resumes_identically(straight, tmp_path):
  data, want = straight
  workdir = str(tmp_path / "run")
  latest = os.path.join(workdir, "checkpoints", "latest")
  proc = start_cli(*args_for(data, workdir, "--config.train.checkpoint_every=1"))
  saving = lambda: os.path.isdir(latest) and any(
      "orbax-checkpoint-tmp" in d for d in os.listdir(latest)) and saved_steps(workdir)
  assert wait_for(saving, proc, poll=0.002), "no save in progress was seen"
  proc.kill()
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  out = run_cli(*args_for(data, workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  assert_no_traceback(out)
  assert_same_run(workdir, want)
  steps = logged_steps(workdir)
  assert steps == sorted(set(steps)) and steps[-1] == 8  # no step logged twice


@pytest.mark.slow
def test_sigint_saves_says_so_exits_130_and_resumes_identically(straight, tmp_path):
  data, want = straight
  workdir = str(tmp_path / "run")
  proc = start_cli(*args_for(data, workdir, "--config.train.checkpoint_every=1000"))
  metrics = os.path.join(workdir, "metrics.jsonl")
  assert wait_for(lambda: os.path.exists(metrics) and os.path.getsize(metrics), proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 130, err[-3000:]
  step = saved_steps(workdir)[-1]
  assert last_line(err) == (f"interrupted by SIGINT at step {step}; the latest checkpoint "
                            f"(step {step}) is saved: rerun the same command to resume")
  out = run_cli(*args_for(data, workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  assert_same_run(workdir, want)


@pytest.mark.slow
def test_sigint_claims_a_saved_checkpoint_only_when_there_is_one(tmp_path):
  workdir = tmp_path / "run"
  proc = start_cli(*args_for(tmp_path / "data", workdir))
  assert wait_for(lambda: (workdir / "run_config.json").exists(), proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 130, err[-3000:]
  # Usually the signal comes before the first step; a save is claimed only if one exists.
  assert ("is saved" in last_line(err)) == bool(saved_steps(str(workdir)))


@pytest.mark.slow
def test_sigterm_during_validation_saves_at_once_and_resumes_identically(straight, tmp_path):
  data, want = straight
  workdir = str(tmp_path / "run")
  proc = start_cli(*args_for(data, workdir))
  # Step 4 ends epoch 1: once it is logged the run is validating.
  assert wait_for(lambda: 4 in logged_steps(workdir) if os.path.exists(
      os.path.join(workdir, "metrics.jsonl")) else False, proc)
  sent = time.time()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 143, err[-3000:]
  assert "the latest checkpoint (step 4) is saved" in last_line(err)
  print(f"SIGTERM in validation: exited {time.time() - sent:.1f} s after the signal")
  out = run_cli(*args_for(data, workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  assert_same_run(workdir, want)


@pytest.mark.slow
def test_a_huge_lr_stops_at_the_first_nonfinite_step_and_scores_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  out = run_cli(*args_for(tmp_path / "data", workdir, "--config.train.lr=1e30",
                          "--config.train.max_steps=5", "--config.train.log_every=10"))
  assert out.returncode == 2
  assert_no_traceback(out)
  assert last_line(out.stderr).startswith("error: training diverged: step 2 ")
  assert not saved_steps(workdir, "best")
  assert not os.path.exists(os.path.join(workdir, "test", "scores.json"))


def test_a_collapsed_model_stops_with_one_line_and_scores_nothing(tmp_path):
  # lr=1e4 leaves the tiny model finite but dead: its gradient norm is exactly 0.
  workdir = str(tmp_path / "run")
  out = run_cli(*args_for(tmp_path / "data", workdir, "--config.train.lr=1e4",
                          "--config.train.max_zero_grad_steps=3", "--config.train.max_steps=12",
                          "--config.train.log_every=4", "--config.train.checkpoint_every=1000"))
  assert out.returncode == 2, out.stderr[-3000:]
  assert_no_traceback(out)
  line = last_line(out.stderr)
  assert line.startswith("error: training collapsed: the gradient norm was exactly 0 for 3 steps "
                         "in a row")
  # True about what exists: no checkpoint was saved before the collapse stopped the run.
  assert "no checkpoint was saved" in line and not saved_steps(workdir)
  assert not os.path.exists(os.path.join(workdir, "test", "scores.json"))


@pytest.mark.slow
def test_nan_in_a_chosen_epoch_keeps_the_last_good_checkpoint_latest(tmp_path):
  # StepLR with gamma=1e30 multiplies the lr by 1e30 when epoch 2 starts (step 5).
  workdir = str(tmp_path / "run")
  nan_args = ("--config.train.epochs=3", "--config.train.gamma=1e30",
              "--config.train.lr_step_epochs=1", "--config.train.checkpoint_every=1000")
  out = run_cli(*args_for(tmp_path / "data", workdir, *nan_args))
  assert out.returncode == 2, out.stderr[-3000:]
  assert_no_traceback(out)
  line = last_line(out.stderr)
  assert "training diverged: step " in line
  assert "the checkpoint of step 4 is the last good state and stays the latest" in line
  assert saved_steps(workdir) == [4] and saved_steps(workdir, "best") == [4]
  assert not os.path.exists(os.path.join(workdir, "test", "scores.json"))
  # Allowing skips: the non-finite steps are counted, never applied, never saved.
  out = run_cli(*args_for(tmp_path / "data", workdir, *nan_args,
                          "--config.train.skip_nonfinite_steps=100"))
  assert_no_traceback(out)
  records = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  skipped = [r for r in records if r.get("skipped_steps")]
  assert skipped and all(r["loss"] is None or np.isfinite(r["loss"]) for r in records
                         if "loss" in r)
  best = saved_steps(workdir, "best")
  for step in saved_steps(workdir):
    path = os.path.join(workdir, "checkpoints", "latest", str(step), "state")
    params = ocp.StandardCheckpointer().restore(path)["params"]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params)), (step, best)


@pytest.mark.slow
def test_two_runs_started_together_on_one_workdir(straight, tmp_path):
  data, want = straight
  workdir = str(tmp_path / "run")
  first = start_cli(*args_for(data, workdir))
  assert wait_for(lambda: os.path.exists(os.path.join(workdir, ".lock.0")), first)
  second = run_cli(*args_for(data, workdir), timeout=600)
  assert second.returncode == 2
  assert f"in use by train (pid {first.pid} on host" in last_line(second.stderr)
  _, err = first.communicate(timeout=900)
  assert first.returncode == 0, err[-3000:]
  assert_same_run(workdir, want)


@pytest.mark.slow
def test_a_run_ended_by_max_steps_continues_with_a_higher_limit(straight, tmp_path):
  data, want = straight
  workdir = str(tmp_path / "run")
  for limit in (2, 2):
    out = run_cli(*args_for(data, workdir, f"--config.train.max_steps={limit}"))
    assert out.returncode == 0, out.stderr[-3000:]
  assert "the run is finished (it reached train.max_steps at step 2" in out.stdout
  assert saved_steps(workdir)[-1] == 2
  out = run_cli(*args_for(data, workdir))
  assert out.returncode == 0, out.stderr[-3000:]
  assert "continuing the run that stopped at step 2" in out.stdout
  want_step, want_params = latest_params(want)
  got_step, got_params = latest_params(workdir)
  assert got_step == want_step == 8
  for a, b in zip(jax.tree.leaves(want_params), jax.tree.leaves(got_params)):
    np.testing.assert_array_equal(a, b)
