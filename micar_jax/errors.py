"""Errors the user can fix (printed as one line, no traceback), and the full-disk case."""

import errno
import threading

from absl import logging


class UserError(Exception):
  """Bad input, config or environment; main prints `error: <message>` and exits 2."""


def is_disk_full(error: BaseException | None) -> bool:
  """Whether ENOSPC is anywhere in the chain (tensorstore reports it inside a ValueError)."""
  while error is not None:
    if ((isinstance(error, OSError) and error.errno == errno.ENOSPC)
        or "No space left on device" in str(error)):
      return True
    error = error.__cause__ or error.__context__
  return False


def quiet_full_disk_in_threads() -> None:
  """A background writer thread (e.g. TensorBoard's) that dies of a full disk logs one line.

  The main thread meets the same full disk and reports it as the run's error;
  other thread exceptions keep Python's default report.
  """
  default = threading.excepthook

  def hook(args: threading.ExceptHookArgs) -> None:
    if is_disk_full(args.exc_value):
      logging.warning("background thread %s stopped: No space left on device",
                      args.thread.name if args.thread else "?")
      return
    default(args)

  threading.excepthook = hook
