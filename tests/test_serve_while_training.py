"""--mode=serve browses a run while it trains: read-only, following its progress and best checkpoint.

A trainer subprocess holds the workdir's lock; a serve subprocess on the same
workdir starts anyway, reports the advancing steps on /api/progress, and
serves each new best checkpoint. A second trainer is still refused, the first
one ends normally, and serve writes nothing into the workdir.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from micar_jax.serve import live as live_lib
from micar_jax.training import workdir_lock

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CLI = [sys.executable, "-m", "micar_jax.main"]


def _args(data, workdir, *extra):
  return ["--config=configs/synthetic.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={data}", "--config.data.synthetic_sizes=(24,8,8)",
          "--config.data.text_seq_len=12", "--config.train.log_every=1",
          "--config.eval.suites=('reference',)", "--config.mesh.num_devices=1", *extra]


def _wait_for(condition, timeout, what):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    value = condition()
    if value:
      return value
    time.sleep(0.2)
  raise AssertionError(f"timed out waiting for {what}")


def _files(workdir):
  """{relative path: (size, mtime)} of everything in the workdir."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      info = os.stat(path)
      out[os.path.relpath(path, workdir)] = (info.st_size, info.st_mtime_ns)
  return out


def _stop(proc):
  if proc.poll() is None:
    proc.send_signal(signal.SIGINT)
  try:
    return proc.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    proc.kill()
    return proc.communicate()


def test_serve_browses_a_run_while_it_trains(tmp_path):
  data, workdir = tmp_path / "data", tmp_path / "run"
  trainer = subprocess.Popen(CLI + _args(data, workdir, "--config.train.epochs=6",
                                         "--config.train.max_patience=100"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  serve = None
  try:
    _wait_for(lambda: (workdir_lock.holder(str(workdir)) or {}).get("mode") == "train"
              or trainer.poll() is not None, 120, "the trainer's lock")
    assert trainer.poll() is None, trainer.communicate()[1][-3000:]
    serve = subprocess.Popen(CLI + _args(data, workdir, "--mode=serve", "--port=0"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = ""
    while serve.poll() is None and not line.startswith("serving"):
      line = serve.stdout.readline()
    assert line.startswith("serving"), serve.communicate()[1][-3000:]
    url = line.split(" on ")[1].split()[0]
    http = httpx.Client(base_url=url, timeout=60)

    # Two writers are still refused: the trainer holds the lock, serve took none.
    second = subprocess.run(CLI + _args(data, workdir, "--config.train.epochs=6"),
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is in use by train (pid {trainer.pid}" in second.stderr

    steps, served = [], []
    while trainer.poll() is None:
      progress = http.get("/api/progress").json()
      assert progress["in_use_by"] is None or progress["in_use_by"]["pid"] == trainer.pid
      steps.append(progress["step"])
      served.append(progress["best_step_served"])
      page = http.get("/")
      assert page.status_code == 200 and 'id="progress"' in page.text
      # The page is read after /api/progress: a newer best may have loaded in between.
      shown = re.search(r'id="served-step">(\d+)<', page.text)
      if progress["best_step_served"] is None:
        assert shown or "no best checkpoint yet" in page.text
      else:
        assert shown and int(shown.group(1)) >= progress["best_step_served"], page.text[-2000:]
      time.sleep(0.3)
    out, err = trainer.communicate()
    assert trainer.returncode == 0, err[-3000:]

    # The last best is picked up once saved (serve polls every live.POLL_S).
    final = max(live_lib.best_steps(str(workdir)))
    progress = _wait_for(lambda: (p := http.get("/api/progress").json())["best_step_served"]
                         == final and p, 120, "the final best checkpoint")
    served.append(final)
    seen_steps = [s for s in steps if s is not None]
    assert seen_steps == sorted(seen_steps) and len(set(seen_steps)) >= 2, steps
    seen_served = [s for s in served if s is not None]
    assert seen_served == sorted(seen_served) and len(set(seen_served)) >= 2, served
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    assert progress["step"] == records[-1]["step"]
    assert progress["validation"]["step"] == [r for r in records if "val_loss" in r][-1]["step"]
    assert progress["in_use_by"] is None and not progress["training"]

    # The trainer's final test shows up without restarting serve; serving writes nothing.
    before = _files(workdir)
    page = _wait_for(lambda: (p := http.get("/")).text.count('href="/examples/') and p, 30,
                     "the test results")
    assert http.get("/examples/0").status_code == 200
    view = http.get("/api/examples/0/view")
    assert view.status_code == 200 and view.json()["generated"] is not None
    time.sleep(2 * live_lib.POLL_S)
    assert _files(workdir) == before
  finally:
    if serve is not None:
      _, serve_err = _stop(serve)
      assert serve.returncode == 130, serve_err[-3000:]
      assert "Traceback" not in serve_err, serve_err[-3000:]
    if trainer.poll() is None:
      _stop(trainer)


def test_progress_tolerates_a_torn_last_line_and_a_trimmed_file(tmp_path):
  path = tmp_path / "metrics.jsonl"
  progress = live_lib.Progress(str(tmp_path))
  assert progress.get() == {"step": None, "epoch": None, "validation": None}
  with open(path, "w", encoding="utf-8") as f:
    f.write('{"step": 1, "epoch": 0, "loss": 2.0}\n{"step": 2, "epoch": 0, "val_loss": 1.5, '
            '"val_bleu": 0.1}\n{"step": 3, "ep')
  got = progress.get()
  assert got["step"] == 2 and got["validation"]["val_bleu"] == 0.1
  with open(path, "a", encoding="utf-8") as f:
    f.write('och": 1, "loss": 1.0}\n')
  assert progress.get()["step"] == 3 and progress.get()["epoch"] == 1
  # A resumed run rewrites the file with fewer records (atomically: a new inode).
  with open(str(path) + ".tmp", "w", encoding="utf-8") as f:
    f.write('{"step": 1, "epoch": 0, "loss": 2.0}\n')
  os.replace(str(path) + ".tmp", path)
  assert progress.get() == {"step": 1, "epoch": 0, "validation": None}


def test_best_steps_lists_only_finished_saves(tmp_path):
  best = tmp_path / "checkpoints" / "best"
  assert live_lib.best_steps(str(tmp_path)) == []
  (best / "4").mkdir(parents=True)
  (best / "9.orbax-checkpoint-tmp-123").mkdir()
  (best / "12").mkdir()
  assert live_lib.best_steps(str(tmp_path)) == [12, 4]
