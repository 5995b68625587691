"""Will a run fit? The compiled train step's memory against what the backend has free.

The train step is compiled ahead of time from shapes only (no parameter is
allocated yet), and XLA's own accounting of that executable is the estimate:
arguments (train state + batch) + outputs + temporaries (activations kept for
the backward pass, gradients, optimizer updates) - the donated state (its
outputs reuse the inputs' buffers) + generated code. The same executable then
runs the training, so checking costs no second compilation.

Free memory: on CPU the host's MemAvailable (all local devices share it; the
process's own resident memory so far, mostly the runtime and the compiler, is
outside both and is reported beside them); on GPU/TPU each device's
bytes_limit - bytes_in_use from memory_stats().
config.train.memory_check: "refuse" (default) stops with one line when the
estimate exceeds the free memory, "warn" prints that line and goes on, "off"
skips the comparison.
"""

import dataclasses
from typing import Any, Sequence

import jax
import ml_collections

from micar_jax import errors

GIB = 1024 ** 3
MEMORY_CHECKS = ("refuse", "warn", "off")
# Above this fraction of the free memory the run starts with a warning.
TIGHT = 0.8


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes one run needs and has.

  Attributes:
    needed: bytes the train step needs on one memory pool (CPU: the sum over
      the mesh's devices, which share the host RAM; else one device's).
    available: free bytes of that pool, None when the backend does not say.
    pool: what `available` measures, for messages.
    in_use: CPU only: this process's resident bytes already (runtime, compiler,
      libraries), outside `needed`; its peak is about in_use + needed.
  """
  needed: int
  available: int | None
  pool: str
  in_use: int | None = None

  @property
  def fits(self) -> bool:
    return self.available is None or self.needed <= self.available

  @property
  def tight(self) -> bool:
    return self.available is not None and self.needed > TIGHT * self.available


def memory_breakdown(compiled: Any) -> dict[str, int] | None:
  """Per-device bytes from `compiled.memory_analysis()` (None where the backend has none):
  arguments, outputs, temporaries, aliased, code; total = the data buffers (arguments +
  outputs + temporaries - aliased); peak, where XLA gives one."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  out = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
         "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes,
         "code": m.generated_code_size_in_bytes}
  out["total"] = out["arguments"] + out["outputs"] + out["temporaries"] - out["aliased"]
  peak = getattr(m, "peak_memory_in_bytes", 0)
  if peak:
    out["peak"] = peak
  return {k: int(v) for k, v in out.items()}


def compiled_bytes(compiled: Any) -> int | None:
  """Per-device bytes of a compiled executable: its data buffers and its code (XLA's
  memory analysis), None if unknown."""
  breakdown = memory_breakdown(compiled)
  return None if breakdown is None else breakdown["total"] + breakdown["code"]


def _proc_bytes(path: str, key: str) -> int | None:
  """The "<key>: N kB" value of a /proc file in bytes, None if absent or unreadable."""
  try:
    with open(path, encoding="ascii") as f:
      for line in f:
        if line.startswith(key + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def host_available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
  """The kernel's MemAvailable (free + reclaimable cache), None where there is no /proc."""
  return _proc_bytes(meminfo, "MemAvailable")


def process_rss_bytes(status: str = "/proc/self/status") -> int | None:
  """This process's resident set size now (VmRSS), None where there is no /proc."""
  return _proc_bytes(status, "VmRSS")


def estimate(per_device: int, devices: Sequence[jax.Device]) -> Estimate:
  """The pool `per_device` bytes on each of `devices` draw from, and its free bytes."""
  device = devices[0]
  if device.platform == "cpu":
    return Estimate(per_device * len(devices), host_available_bytes(), "free host RAM",
                    process_rss_bytes())
  stats = device.memory_stats() or {}
  limit = stats.get("bytes_limit")
  free = None if limit is None else int(limit) - int(stats.get("bytes_in_use", 0))
  return Estimate(per_device, free, f"free memory of one {device.platform} device")


def describe(est: Estimate) -> str:
  """'needs ~1.2 GiB of 8.0 GiB free host RAM' (the status line's memory part)."""
  have = "" if est.available is None else f" of {est.available / GIB:.1f} GiB"
  used = "" if est.in_use is None else f" (this process holds {est.in_use / GIB:.2f} GiB already)"
  return f"needs ~{est.needed / GIB:.2f} GiB{have} {est.pool}{used}"


def check_mode(config: ml_collections.ConfigDict) -> str:
  """config.train.memory_check, validated (before minutes of compilation, not after)."""
  mode = config.train.memory_check
  if mode not in MEMORY_CHECKS:
    raise errors.UserError(f"config.train.memory_check={mode!r}; expected one of {MEMORY_CHECKS}")
  return mode


def check(est: Estimate, config: ml_collections.ConfigDict) -> str | None:
  """Applies config.train.memory_check; returns a warning line, if any.

  Raises:
    errors.UserError: the estimate exceeds the free memory and memory_check="refuse".
  """
  mode = check_mode(config)
  if mode == "off" or not est.tight:
    return None
  advice = (f"use --config=configs/{config.dataset}.py:tiny or a smaller --config.train.batch_size (now "
            f"{config.train.batch_size})")
  if est.fits:
    return f"warning: the train step {describe(est)}, little to spare: {advice} if it fails"
  line = (f"the train step {describe(est)}: it will not fit; {advice}, "
          "or --config.train.memory_check=warn to try anyway")
  if mode == "refuse":
    raise errors.UserError(line)
  return "warning: " + line

