"""The serve request queue: concurrent rows share calls of fixed shape; errors reach callers."""

import threading
import time

import numpy as np
import pytest

from micar_jax.serve import batcher as batcher_lib


def _recording_fn(calls):
  def fn(rows, n):
    calls.append((rows.shape, n))
    return [float(r.sum()) for r in rows[:n]]
  return fn


def test_concurrent_rows_share_calls_padded_to_an_allowed_size():
  calls = []
  b = batcher_lib.Batcher(_recording_fn(calls), sizes=[1, 2, 4], max_wait_s=0.5)
  futures = [b.submit(np.full((2, 3), i, np.float32)) for i in range(11)]
  assert [f.result(timeout=30) for f in futures] == [6.0 * i for i in range(11)]
  b.close()
  assert calls == [((4, 2, 3), 4), ((4, 2, 3), 4), ((4, 2, 3), 3)]
  assert (b.calls, b.rows) == (3, 11)


def test_power_of_two_sizes_end_at_the_batch_size():
  assert batcher_lib.power_of_two_sizes(1) == [1]
  assert batcher_lib.power_of_two_sizes(8) == [1, 2, 4, 8]
  assert batcher_lib.power_of_two_sizes(12) == [1, 2, 4, 8, 12]


def test_a_lone_row_waits_at_most_max_wait():
  calls = []
  b = batcher_lib.Batcher(_recording_fn(calls), sizes=[1, 8], max_wait_s=0.05)
  start = time.monotonic()
  assert b.submit(np.ones(3, np.float32)).result(timeout=30) == 3.0
  assert time.monotonic() - start < 5
  b.close()
  assert calls == [((1, 3), 1)]


def test_a_failing_batch_fails_its_requests_and_the_worker_goes_on():
  fail = threading.Event()
  fail.set()

  def fn(rows, n):
    if fail.is_set():
      fail.clear()
      raise RuntimeError("device lost")
    return list(rows[:n, 0])

  b = batcher_lib.Batcher(fn, sizes=[2], max_wait_s=0.01)
  with pytest.raises(RuntimeError, match="device lost"):
    b.submit(np.zeros(1)).result(timeout=30)
  assert b.submit(np.full(1, 7.0)).result(timeout=30) == 7.0
  b.close()
  with pytest.raises(ValueError, match="batch sizes"):
    batcher_lib.Batcher(fn, sizes=[0, 2], max_wait_s=0.01)
