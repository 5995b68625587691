"""Errors the user can fix (printed as one line, no traceback), and the full-disk case.

`UserError` is the one base class of the project's own user errors; the
command line (micar_jax.cli) prints them as `error: <message>` with exit code 2
and lets every other exception keep its traceback. Its subclasses:
  ConfigError                 a config value that cannot work (here);
  images.ImageError           a missing, unreadable or corrupt image;
  jsonl.MissingDataError      a prepared dataset that does not exist (also
                              `sources.MissingDataError`);
  stopping.Diverged           a training run whose loss or state went non-finite;
  checkpointing.DiskFullError a checkpoint save that ran out of disk space;
and a few narrower ones next to their users (convert, prepare).
"""

import errno
import signal
import threading

from absl import logging


class UserError(Exception):
  """Bad input, config or environment; a program prints `error: <message>` and exits 2."""


class ConfigError(UserError, ValueError):
  """A config value of the wrong type, out of range, or that cannot work.

  Raised where the value is used as well as by micar_jax.config.validation, so
  a module needs no import of the validation table to report one. A ValueError
  too: library callers that try a value and catch ValueError keep working.
  """


class Interrupted(Exception):
  """SIGINT or SIGTERM ended the run; the process exits 128 + signal (130 / 143).

  Not a UserError: the command line prints its message with its own exit code.
  """

  def __init__(self, signum: int, detail: str = "", safe: bool = False):
    # `safe`: raised between two steps or batches, where the state can be saved.
    self.signum, self.safe = signum, safe
    self.exit_code = 128 + signum
    name = signal.Signals(signum).name
    super().__init__(f"interrupted by {name}" + (f" {detail}" if detail else ""))


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
