"""Start-up status lines and quiet accelerator probing."""

import logging
import os

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
