"""Device memory figures: CPU reports none (never a made-up number), the batch prediction."""

import jax
import pytest

from micar_jax.performance import device_memory


def test_cpu_has_no_memory_statistics():
  cpu = jax.devices("cpu")[0]
  assert device_memory.peak_memory([cpu]) is None
  assert device_memory.memory_limit(cpu) is None
  assert device_memory.UNAVAILABLE.format(cpu.platform).startswith("unavailable: the cpu")


@pytest.mark.parametrize("sizes, memory, limit, expected", [
    # fixed 1000 + 100 per image: (10000 - 1000) / 100 = 90 images -> 88 (multiple of 8).
    ((32, 64), (4200, 7400), 10_000, 88),
    # Not even 8 images fit.
    ((32, 64), (4200, 7400), 1_500, 0),
])
def test_largest_batch_follows_the_line_through_two_estimates(sizes, memory, limit, expected):
  assert device_memory.predict_largest_batch(sizes, memory, limit) == expected


def test_largest_batch_needs_increasing_sizes():
  with pytest.raises(ValueError, match="batch sizes must increase"):
    device_memory.predict_largest_batch((64, 32), (1, 2), 10)


@pytest.mark.parametrize("text, oom", [
    ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB", True),
    ("INTERNAL: ptxas exited with non-zero error code", False),
])
def test_out_of_memory_is_told_from_other_runtime_errors(text, oom):
  assert device_memory.is_out_of_memory(RuntimeError(text)) == oom
