"""Why a training run stops early: a signal (SIGINT/SIGTERM) or divergence.

While `StopSignals` is active, SIGINT and SIGTERM only set a flag; the loop
checks it between train steps and between validation batches, saves the
latest checkpoint and raises `errors.Interrupted`. A second signal stops at once
(the previous checkpoint stays the latest). Outside it, `raise_on_signals`
makes both signals raise `errors.Interrupted` where the program is.
"""

import signal
from typing import Iterable, Iterator, TypeVar

from micar_jax import errors

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Diverged(errors.UserError):
  """A train step's loss, gradient or updated state was not finite (beyond the allowed skips)."""


def _raise(signum, frame):  # pylint: disable=unused-argument
  raise errors.Interrupted(signum)


def raise_on_signals() -> None:
  """SIGINT and SIGTERM raise `errors.Interrupted` (the default outside a training loop)."""
  for signum in SIGNALS:
    signal.signal(signum, _raise)


class StopSignals:
  """Context manager: a first SIGINT/SIGTERM sets `signum`, a second one raises at once."""

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def _handler(self, signum, frame):  # pylint: disable=unused-argument
    if self.signum is not None:
      raise errors.Interrupted(signum, "again, before the run could save: the previous checkpoint "
                        "stays the latest")
    self.signum = signum

  def __enter__(self) -> "StopSignals":
    try:
      self._previous = {s: signal.signal(s, self._handler) for s in SIGNALS}
    except ValueError:  # not the main thread: signals stay as they are
      self._previous = {}
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def between(self, items: Iterable[T]) -> Iterator[T]:
    """Yields `items`, raising `errors.Interrupted` between two of them once a signal came."""
    for item in items:
      if self.signum is not None:
        raise errors.Interrupted(self.signum, safe=True)
      yield item
