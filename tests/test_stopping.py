"""Signals during training: the first sets a flag checked at safe points, a second stops at once."""

import os
import signal

import pytest

from micar_jax import errors
from micar_jax.training import stopping


def test_a_first_signal_only_sets_the_flag_and_handlers_come_back():
  before = signal.getsignal(signal.SIGTERM)
  with stopping.StopSignals() as stop:
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signum == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is before


def test_batches_stop_between_two_items_once_a_signal_came():
  seen = []
  with stopping.StopSignals() as stop:
    with pytest.raises(errors.Interrupted) as e:
      for item in stop.between(range(5)):
        seen.append(item)
        if item == 1:
          os.kill(os.getpid(), signal.SIGINT)
  assert seen == [0, 1]
  assert e.value.safe and e.value.exit_code == 130


def test_a_second_signal_raises_at_once_and_is_not_a_safe_point():
  with stopping.StopSignals():
    os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(errors.Interrupted) as e:
      os.kill(os.getpid(), signal.SIGTERM)
  assert not e.value.safe and e.value.exit_code == 143
  assert "previous checkpoint stays the latest" in str(e.value)
