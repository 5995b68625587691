"""Device memory figures for the benchmark: runtime peaks and limits, the batch that fits.

XLA's estimate of one compiled program is `memory_check.compiled_bytes`.

The runtime's statistics (`device.memory_stats()`) exist on GPU and TPU; the
CPU runtime keeps none, and every function here then says so (None, or a
reason string) instead of inventing a number.
"""

from collections.abc import Sequence

import jax

UNAVAILABLE = "unavailable: the {} runtime keeps no memory statistics"


def stats(device: jax.Device) -> dict[str, int]:
  """The runtime's memory statistics of one device ({} where it keeps none)."""
  try:
    return device.memory_stats() or {}
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return {}


def peak_memory(devices: Sequence[jax.Device]) -> int | None:
  """Largest peak_bytes_in_use over devices since the process started; None without statistics."""
  peaks = [stats(d).get("peak_bytes_in_use") for d in devices]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def memory_limit(device: jax.Device) -> int | None:
  """Bytes the runtime may allocate on the device (its pool size), None without statistics."""
  return stats(device).get("bytes_limit")


def predict_largest_batch(sizes: tuple[int, int], memory: tuple[int, int], limit: int,
                          multiple: int = 8) -> int:
  """Largest batch (a multiple of `multiple`) whose linear memory estimate stays under limit.

  Args:
    sizes: two batch sizes b1 < b2.
    memory: XLA's compiled-memory estimates at b1 and b2 (bytes).
    limit: bytes available.

  Memory is modelled as fixed + per_image × batch through the two points;
  returns 0 when not even `multiple` images fit.
  """
  (b1, b2), (m1, m2) = sizes, memory
  if b2 <= b1:
    raise ValueError(f"batch sizes must increase, got {b1} and {b2}")
  per_image = max(m2 - m1, 1) / (b2 - b1)
  fixed = m1 - per_image * b1
  return max(int((limit - fixed) / per_image) // multiple * multiple, 0)


def is_out_of_memory(error: Exception) -> bool:
  """Whether a runtime error is an allocation failure (the batch does not fit)."""
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "OOM" in text
