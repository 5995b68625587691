"""Start-up status lines, the console's log format and quiet accelerator probing."""

import logging
import os
import subprocess
import sys

import pytest

from micar_jax.core import status


def test_a_phase_prints_its_name_then_its_time_and_note(capsys):
  with status.phase("compiling the train step") as info:
    info.note = "needs ~0.01 GiB"
  out = capsys.readouterr().out
  assert out.startswith("compiling the train step ... ")
  assert out.rstrip().endswith(" s, needs ~0.01 GiB") and out.count("\n") == 1
  with status.phase("quiet", enabled=False):
    pass
  assert capsys.readouterr().out == ""


def test_a_failing_phase_says_so_and_reraises(capsys):
  with pytest.raises(RuntimeError):
    with status.phase("restoring the latest checkpoint"):
      raise RuntimeError("boom")
  assert capsys.readouterr().out == "restoring the latest checkpoint ... failed\n"


def test_cpu_only_machines_skip_accelerator_probing(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(status, "has_accelerator_plugin", lambda: False)
  status.quiet_backend_probing()
  assert os.environ["JAX_PLATFORMS"] == "cpu"
  # A user's own choice, or an installed plugin, is left alone.
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  status.quiet_backend_probing()
  assert os.environ["JAX_PLATFORMS"] == "cuda"
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setattr(status, "has_accelerator_plugin", lambda: True)
  status.quiet_backend_probing()
  assert "JAX_PLATFORMS" not in os.environ


def test_the_probe_line_is_dropped_but_backend_warnings_stay(caplog):
  status.quiet_backend_probing()
  logger = logging.getLogger("jax._src.xla_bridge")
  with caplog.at_level(logging.INFO, logger="jax._src.xla_bridge"):
    logger.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
    logger.warning("Unable to initialize backend 'cuda': driver too old")
    logger.info("Platform 'cpu' is experimental")
  messages = [r.getMessage() for r in caplog.records]
  assert messages == ["Unable to initialize backend 'cuda': driver too old",
                      "Platform 'cpu' is experimental"]


# main's console: the project's validation line (run_logging) and a metric suite's warning,
# rouge-score's INFO line, a third-party warning.
_CONSOLE_SCRIPT = """
import logging as std_logging, sys
from absl import app, logging
from micar_jax.core import status
from micar_jax.metrics import scores
from micar_jax.training import run_logging

def main(argv):
  status.plain_console_logging()
  logging.set_verbosity(logging.INFO)
  found = scores.compute_scores(["the optic disc is normal ."], ["the optic disc is pale ."],
                                suites=("reference",), wordnet_dir=sys.argv[1])
  log = run_logging.RunLog(sys.argv[2], None)
  log.validation(3, 0, 0.5, found, improved=True)
  log.close()
  std_logging.getLogger("somelib").warning("a library warning")

app.run(main)
"""


def test_the_console_shows_the_projects_lines_plain_and_no_library_chatter(tmp_path):
  out = subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT, str(tmp_path / "no_wordnet"),
                        str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr
  lines = out.stderr.strip().splitlines()
  assert "Using default tokenizer." not in out.stderr, out.stderr
  assert lines[0].startswith("warning: ref/meteor skipped: "), out.stderr
  assert lines[1].startswith("epoch 0 validation loss 0.5000 ref/bleu1="), out.stderr
  assert lines[1].endswith(" (best)"), out.stderr
  # Other libraries' warnings keep absl's prefix, which says where they came from.
  assert len(lines) == 3 and lines[2].startswith("W") and lines[2].endswith("a library warning")
