"""Start-up status lines, the console's log format, and quiet accelerator probing.

Each slow start-up phase (generating data, building the input pipeline,
compiling, restoring) prints "<what> ..." when it starts and its time when it
ends, so a run is never silent for minutes. Only process 0 prints.

`plain_console_logging` makes the project's own log lines plain text like the
status lines ("step 10 epoch 0 loss ...", "warning: ...") and drops other
libraries' INFO chatter; their warnings and errors keep absl's prefix (time,
file:line), which says where they came from.
"""

import contextlib
import importlib.util
import logging as std_logging
import os
import sys
import time
from typing import Iterator

# The package's folder: log records from files below it are the project's own.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Packages whose presence means an accelerator backend may exist: JAX then probes as usual.
ACCELERATOR_PLUGINS = ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                       "jax_rocm7_plugin", "jax_plugins")
# JAX's INFO line when a backend it probes is absent (not an error).
PROBE_NOISE = "Unable to initialize backend"


class Phase:
  """What a phase may add to its closing line (e.g. the memory it will need)."""

  def __init__(self):
    self.note = ""


@contextlib.contextmanager
def phase(what: str, enabled: bool = True) -> Iterator[Phase]:
  """Prints "<what> ..." now and " <seconds> s[, note]" when the block ends without error."""
  info = Phase()
  if enabled:
    print(f"{what} ...", end="", flush=True)
  start = time.perf_counter()
  try:
    yield info
  except BaseException:
    if enabled:
      print(" failed", flush=True)
    raise
  if enabled:
    note = f", {info.note}" if info.note else ""
    print(f" {time.perf_counter() - start:.1f} s{note}", flush=True)


def is_project_record(record: std_logging.LogRecord) -> bool:
  return os.path.abspath(record.pathname).startswith(PACKAGE_DIR + os.sep)


class _ProjectFirst(std_logging.Filter):
  """Drops other libraries' INFO and DEBUG records (e.g. rouge-score's "Using default tokenizer.")."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or is_project_record(record)


class _PlainFormatter(std_logging.Formatter):
  """The project's INFO as its message, its WARNING as "warning: <message>"; the rest as before."""

  def __init__(self, fallback: std_logging.Formatter | None):
    super().__init__()
    self._fallback = fallback or std_logging.Formatter()

  def format(self, record: std_logging.LogRecord) -> str:
    if not is_project_record(record) or record.levelno >= std_logging.ERROR:
      return self._fallback.format(record)
    text = record.getMessage()
    if record.exc_info:
      text += "\n" + self.formatException(record.exc_info)
    return text if record.levelno < std_logging.WARNING else f"warning: {text}"


# One instance, so repeated calls add the filter once.
_PROJECT_FIRST = _ProjectFirst()


def plain_console_logging() -> None:
  """Puts the absl console handler in the project's format (see the module docstring)."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = absl_logging.get_absl_handler()
  handler.addFilter(_PROJECT_FIRST)
  current = handler.python_handler.formatter
  if not isinstance(current, _PlainFormatter):
    handler.python_handler.setFormatter(_PlainFormatter(current))


def has_accelerator_plugin() -> bool:
  """True when a TPU/GPU plugin package is installed (so JAX should probe for it)."""
  return any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


class _DropProbeNoise(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return not (record.levelno < std_logging.WARNING and PROBE_NOISE in record.getMessage())


# One instance, so repeated calls add the filter once.
_DROP_PROBE_NOISE = _DropProbeNoise()


def quiet_backend_probing() -> None:
  """Keeps JAX's "Unable to initialize backend 'tpu'" INFO line off a CPU-only machine.

  With no accelerator plugin installed and JAX_PLATFORMS unset, JAX_PLATFORMS=cpu
  stops the probing (a user's own JAX_PLATFORMS is left alone). The probe line is
  also dropped from the JAX logger below WARNING; real backend errors (warnings
  and errors, or a platform the user asked for) still show.
  """
  if not os.environ.get("JAX_PLATFORMS") and not has_accelerator_plugin():
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported already: its config read the variable before
      sys.modules["jax"].config.update("jax_platforms", "cpu")
  std_logging.getLogger("jax._src.xla_bridge").addFilter(_DROP_PROBE_NOISE)
