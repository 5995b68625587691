"""Training end to end on a tiny synthetic set: outputs, exact resume after interruptions."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from micar_jax.training import run_logging, train


def latest_params(workdir):
  root = os.path.join(workdir, "checkpoints", "latest")
  step = max(int(d) for d in os.listdir(root) if d.isdigit())
  restored = ocp.StandardCheckpointer().restore(os.path.join(root, str(step), "state"))
  return step, restored["params"]


def test_train_writes_outputs_and_scores(tmp_path, tiny_config):
  config = tiny_config(tmp_path)
  workdir = str(tmp_path / "run")
  out = train.train_and_evaluate(config, workdir)
  assert out["num_examples"] == 4
  assert "ref/bleu4" in out["label_references"]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  train_lines = [l for l in lines if "loss" in l]
  assert [l["step"] for l in train_lines] == list(range(1, 9))  # 4 steps x 2 epochs
  assert {"lr_lr", "lr_v_lr", "images_per_sec", "expert_load", "dropped_fraction"} <= set(
      train_lines[0])
  assert len([l for l in lines if "val_loss" in l]) == 2
  assert os.path.exists(os.path.join(workdir, "test", "generated_reports.csv"))
  assert os.listdir(os.path.join(workdir, "tensorboard"))


class _Interrupt(Exception):
  pass


def test_interrupted_runs_resume_exactly(tmp_path, monkeypatch, tiny_config):
  config = tiny_config(tmp_path)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight)
  want_step, want = latest_params(straight)

  # Kill the run right after step 3 and after step 6 (everything since the last
  # checkpoint is lost, as with SIGKILL), restarting each time.
  resumed = str(tmp_path / "resumed")
  real_log = run_logging.RunLog.train
  for kill_at in (3, 6, None):
    def killing(self, step, *args, kill_at=kill_at):
      real_log(self, step, *args)
      if step == kill_at:
        raise _Interrupt()

    monkeypatch.setattr(run_logging.RunLog, "train", killing)
    if kill_at is None:
      train.train_and_evaluate(config, resumed)
    else:
      with pytest.raises(_Interrupt):
        train.train_and_evaluate(config, resumed)
  got_step, got = latest_params(resumed)
  assert got_step == want_step == 8
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(a, b)
  metrics = [json.loads(l) for l in open(os.path.join(resumed, "metrics.jsonl"))]
  assert max(l["step"] for l in metrics) == 8


def test_max_steps_ends_training_then_tests(tmp_path, tiny_config):
  config = tiny_config(tmp_path, max_steps=2)
  workdir = str(tmp_path / "smoke")
  out = train.train_and_evaluate(config, workdir)
  assert out["num_examples"] == 4
  assert latest_params(workdir)[0] == 2


def _validated_steps(workdir):
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [l["step"] for l in lines if "val_loss" in l]


def _best_steps(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints", "best")))


def test_a_run_stopped_mid_epoch_continues_exactly_as_an_uninterrupted_one(tmp_path, tiny_config):
  straight = str(tmp_path / "straight")
  want = train.train_and_evaluate(tiny_config(tmp_path), straight)
  stopped = str(tmp_path / "stopped")
  train.train_and_evaluate(tiny_config(tmp_path, max_steps=6), stopped)  # 4 steps per epoch
  # The partial second epoch is neither validated nor a best candidate.
  assert _validated_steps(stopped) == [4] and _best_steps(stopped) == ["4"]
  got = train.train_and_evaluate(tiny_config(tmp_path), stopped)
  assert _validated_steps(stopped) == _validated_steps(straight) == [4, 8]
  assert _best_steps(stopped) == _best_steps(straight)
  assert got["label_references"] == want["label_references"]
  assert got["raw_references"] == want["raw_references"]


def test_a_stop_before_the_first_validation_tests_the_current_weights(tmp_path, tiny_config,
                                                                       capsys):
  workdir = str(tmp_path / "run")
  out = train.train_and_evaluate(tiny_config(tmp_path, max_steps=2), workdir)
  assert out["num_examples"] == 4 and not _best_steps(workdir)
  assert "before its first validation: testing its current weights" in capsys.readouterr().out


@pytest.mark.parametrize("key,value,message", [
    ("init_from", "missing_dir", "init_from=missing_dir: no such folder"),
    ("init_from", "RUN", "is a run folder, not a converted model"),
    ("vision_init_from", "weights/absent", "no converted ResNet weights there"),
])
def test_start_weights_are_checked_before_any_compile(tmp_path, tiny_config, monkeypatch, key,
                                                      value, message):
  from micar_jax import errors  # pylint: disable=g-import-not-at-top
  from micar_jax.training import steps  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path)
  run_folder = tmp_path / "RUN"
  (run_folder / "checkpoints").mkdir(parents=True)
  monkeypatch.chdir(tmp_path)
  if key == "init_from":
    config.init_from = value
  else:
    config.model.vision_init_from = value

  def no_compile(*args, **kwargs):
    raise AssertionError("the train step was compiled before the start weights were checked")

  monkeypatch.setattr(steps, "lower_train_step", no_compile)
  with pytest.raises(errors.UserError, match=message):
    train.train_and_evaluate(config, str(tmp_path / "new_run"))


def test_progress_total_honours_max_steps_and_speed_counts_train_steps(tmp_path, monkeypatch,
                                                                       capsys, tiny_config):
  totals = []
  real_progress = run_logging.RunLog.progress

  def progress(self, total, initial, desc):
    totals.append((total, initial))
    return real_progress(self, total, initial, desc)

  monkeypatch.setattr(run_logging.RunLog, "progress", progress)
  config = tiny_config(tmp_path, max_steps=6, log_every=3)  # 4 steps per epoch
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  assert totals == [(4, 0), (2, 0)]  # the second epoch's bar ends at max_steps
  printed = capsys.readouterr().out
  for phase in ("compiling the train step ... ", "initialising the model ... ",
                "building the input pipeline ... "):
    assert phase in printed
  assert "needs ~" in printed and "GiB" in printed
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  speeds = [l["images_per_sec"] for l in lines if "loss" in l]
  assert [l["step"] for l in lines if "loss" in l] == [3, 4, 6]
  assert all(0 < s < 1e5 for s in speeds)
