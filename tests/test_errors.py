"""Tests for micar_jax.errors: recognising a full disk and quieting writer threads that die of it."""

import errno
import threading

import pytest

from micar_jax import errors
from micar_jax.core import weights


def test_is_disk_full_finds_enospc_in_the_chain_or_the_text():
  assert errors.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as inner:
      raise RuntimeError("save failed") from inner
  except RuntimeError as outer:
    assert errors.is_disk_full(outer)
  # tensorstore's form: a ValueError whose text carries the OS message.
  assert errors.is_disk_full(ValueError("RESOURCE_EXHAUSTED: ... No space left on device [28]"))
  assert not errors.is_disk_full(OSError(errno.EACCES, "Permission denied"))
  assert not errors.is_disk_full(None)


@pytest.fixture
def previous_hook():
  """Stands in for the hook in place before (pytest installs its own per test)."""
  saved, seen = threading.excepthook, []
  threading.excepthook = lambda args: seen.append(args.exc_value)
  yield seen
  threading.excepthook = saved


def _die(error):
  def target():
    raise error
  thread = threading.Thread(target=target, name="writer")
  thread.start()
  thread.join()


def test_thread_dying_of_a_full_disk_logs_one_line_others_go_to_the_previous_hook(
    previous_hook, caplog):
  errors.quiet_full_disk_in_threads()
  _die(OSError(errno.ENOSPC, "No space left on device"))
  assert previous_hook == []
  assert "background thread writer stopped: No space left on device" in caplog.text
  bug = RuntimeError("a real bug")
  _die(bug)
  assert previous_hook == [bug]


def test_the_projects_user_errors_share_one_base_class():
  from micar_jax.config import validation
  from micar_jax.core import checkpointing
  from micar_jax.data import images, jsonl, sources
  from micar_jax.training import stopping
  for cls in (errors.ConfigError, validation.ConfigError, images.ImageError,
              jsonl.MissingDataError, sources.MissingDataError, stopping.Diverged,
              checkpointing.DiskFullError, weights.MismatchError):
    assert issubclass(cls, errors.UserError), cls
  # Signals are no user error: the command line ends them with their own exit code.
  assert not issubclass(errors.Interrupted, errors.UserError)
  # Callers that catch these by their standard class keep working.
  assert issubclass(images.ImageError, ValueError)
  assert issubclass(errors.ConfigError, ValueError)
  assert issubclass(jsonl.MissingDataError, FileNotFoundError)
