"""A request queue that answers concurrent single-image requests with one batched call.

Requests arriving within `max_wait_s` of the first waiting one (up to the
largest batch size of them) go through one call of `batch_fn`, which receives
them zero-padded to the smallest allowed batch size that holds them: a jitted
`batch_fn` compiles once per allowed size (e.g. 1, 2, 4, ..., eval.batch_size),
and a lone request does not pay for a full batch.
"""

import concurrent.futures
import queue
import threading
import time
from typing import Any, Callable, Sequence

import numpy as np

BatchFn = Callable[[np.ndarray, int], Sequence[Any]]


def power_of_two_sizes(max_batch: int) -> list[int]:
  """1, 2, 4, ... below max_batch, then max_batch."""
  if max_batch < 1:
    raise ValueError(f"max_batch must be >= 1, got {max_batch}")
  return [2**i for i in range(max_batch.bit_length()) if 2**i < max_batch] + [max_batch]


class Batcher:
  """Runs `batch_fn(rows [size, ...], n)` in a worker thread; returns its first n results.

  Attributes:
    sizes: the allowed batch sizes, ascending.
    calls: batch_fn calls made so far.
    rows: requests answered so far.
  """

  def __init__(self, batch_fn: BatchFn, sizes: Sequence[int], max_wait_s: float):
    if not sizes or min(sizes) < 1:
      raise ValueError(f"batch sizes must be >= 1, got {list(sizes)}")
    self._fn, self.sizes, self.max_wait_s = batch_fn, sorted(set(sizes)), max_wait_s
    self.max_batch = self.sizes[-1]
    self._queue: queue.Queue = queue.Queue()
    self.calls = self.rows = 0
    self._worker = threading.Thread(target=self._loop, name="batcher", daemon=True)
    self._worker.start()

  def submit(self, row: np.ndarray) -> concurrent.futures.Future:
    """Queues one row (e.g. float32 [H, W, 3]); the future holds its result."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    self._queue.put((np.asarray(row), future))
    return future

  def close(self) -> None:
    """Stops the worker after the queued requests (later submits never complete)."""
    self._queue.put(None)
    self._worker.join()

  def _collect(self) -> list | None:
    first = self._queue.get()
    if first is None:
      return None
    pending, deadline = [first], time.monotonic() + self.max_wait_s
    while len(pending) < self.max_batch:
      try:
        item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
      except queue.Empty:
        break
      if item is None:
        self._queue.put(None)  # seen again by the next _collect, after this batch
        break
      pending.append(item)
    return pending

  def _loop(self) -> None:
    while (pending := self._collect()) is not None:
      size = next(s for s in self.sizes if s >= len(pending))
      rows = np.zeros((size,) + pending[0][0].shape, pending[0][0].dtype)
      for i, (row, _) in enumerate(pending):
        rows[i] = row
      try:
        results = self._fn(rows, len(pending))
      except Exception as e:  # pylint: disable=broad-except
        # Reported to every waiting request; the worker keeps serving.
        for _, future in pending:
          future.set_exception(e)
        continue
      self.calls += 1
      self.rows += len(pending)
      for (_, future), result in zip(pending, results):
        future.set_result(result)
