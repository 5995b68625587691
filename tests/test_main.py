"""The command line: summary totals, one-line errors, SIGTERM saves and the run resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-m", "micar_jax.main"]


def run_cli(*args, timeout=600):
  return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("config,vocab,total", [
    ("configs/covctr.py", 229, 156_003_520),
    ("configs/mmr.py", 2046, 191_150_848),
])
def test_summary_prints_the_reference_total_last(config, vocab, total):
  out = run_cli(f"--config={config}", "--mode=summary", f"--config.model.vocab_size={vocab}")
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip().splitlines()[-1] == f"total_params={total}"
  assert "vis_enc" in out.stdout


def _one_line_error(out, *fragments):
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def test_unknown_config_key_is_one_line():
  out = run_cli("--config=configs/mmr.py", "--mode=summary", "--config.model.num_expertz=4")
  _one_line_error(out, "unknown config key", "num_expertz")


def test_missing_config_file_is_one_line():
  _one_line_error(run_cli("--config=configs/nope.py", "--mode=summary"), "configs/nope.py")


def test_missing_data_folder_names_the_prepare_command(tmp_path):
  out = run_cli("--config=configs/covctr.py", f"--workdir={tmp_path / 'w'}",
                f"--config.data_dir={tmp_path / 'absent'}")
  _one_line_error(out, "python -m micar_jax.data.prepare")


def test_unwritable_workdir_is_one_line(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  out = run_cli("--config=configs/synthetic.py", f"--workdir={blocker / 'sub'}")
  _one_line_error(out, "not writable")


def test_without_workdir_the_run_folder_is_runs_dataset_and_printed_first(tmp_path):
  out = subprocess.run(CLI + [f"--config={os.path.abspath('configs/covctr.py')}",
                              f"--config.data_dir={tmp_path / 'absent'}"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
  _one_line_error(out, "python -m micar_jax.data.prepare")
  assert out.stdout.splitlines()[0] == f"run folder: {tmp_path / 'runs' / 'covctr'}"
  assert (tmp_path / "runs" / "covctr").is_dir()


def test_a_selection_key_its_suite_lacks_is_one_line(tmp_path):
  out = run_cli("--config=configs/synthetic.py", f"--workdir={tmp_path / 'w'}",
                "--config.train.select_key=coco/cider")
  _one_line_error(out, "train.select_key='coco/cider' is not reported by suite 'reference'")


def _tiny_args(tmp_path, workdir, *extra):
  return ["--config=configs/synthetic.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={tmp_path / 'data'}", "--config.data.synthetic_sizes=(16,4,4)",
          "--config.data.text_seq_len=12", "--config.train.epochs=2",
          "--config.train.log_every=1", "--config.eval.suites=('reference',)",
          "--config.mesh.num_devices=1", *extra]


def test_incompatible_checkpoint_config_is_one_line(tmp_path):
  workdir = tmp_path / "run"
  # Testing an untrained workdir records its config (and says there is no checkpoint yet).
  out = run_cli(*_tiny_args(tmp_path, workdir, "--mode=test"))
  _one_line_error(out, "no best checkpoint")
  out = run_cli(*_tiny_args(tmp_path, workdir, "--config.model.d_ff=96"))
  _one_line_error(out, "incompatible config", "d_ff")


def test_sigterm_saves_then_the_run_resumes(tmp_path):
  workdir = tmp_path / "run"
  args = _tiny_args(tmp_path, workdir, "--config.train.checkpoint_every=1000")
  proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 143, err
  latest = workdir / "checkpoints" / "latest"
  saved = sorted(int(d) for d in os.listdir(latest) if d.isdigit())
  assert saved and saved[-1] < 8
  out = run_cli(*args)
  assert out.returncode == 0, out.stderr
  steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if '"loss"' in l]
  assert steps[-1] == 8 and set(range(saved[-1] + 1, 9)) <= set(steps)
  assert (workdir / "test" / "scores.json").exists()
