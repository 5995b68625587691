"""Per-chip hardware figures: the one table that planning and benchmarking read.

Sources (vendor specification pages, read 2026-11):
  TPU v4   cloud.google.com/tpu/docs/v4   (275 TFLOP/s bf16; 32 GiB HBM2 at 1200 GB/s).
           Its ICI figure is not on that page: 6 links x 45 GB/s one way each, from
           "How to Scale Your Model" (jax-ml.github.io/scaling-book), part "TPUs".
  TPU v5e  cloud.google.com/tpu/docs/v5e  (197 TFLOP/s; 16 GiB at 819 GB/s; ICI 400 GB/s
           bidirectional per chip).
  TPU v5p  cloud.google.com/tpu/docs/v5p  (459 TFLOP/s; 95 GiB at 2765 GB/s; ICI 1200 GB/s
           bidirectional per chip).
  TPU v6e  cloud.google.com/tpu/docs/v6e  (918 TFLOP/s; 32 GiB at 1638 GB/s; ICI 800 GB/s
           bidirectional per chip).
  GPUs     Peaks: NVIDIA's H100, H200 and A100 datasheets (dense bf16 TFLOP/s, no sparsity).
           Memory and its bandwidth, for h100 (H100 SXM 80GB), h200 and a100 (A100 SXM4
           80GB; the 40GB card shares its kind and peak, not its memory): the device as
           CUDA reports it, from XLA's specs (github.com/openxla/xla,
           xla/backends/gpu/target_config/specs/{h100_sxm,h200,a100_sxm_80}.txtpb; also
           micar_jax/performance/gpu_targets/): 79.1 GiB at 3352 GB/s, 141.0 GiB at
           4800 GB/s, 79.3 GiB at 2039 GB/s. ici_gbps is NVLink within one host, from the
           same datasheets: 900 GB/s bidirectional per GPU (H100/H200 SXM, NVLink 4),
           600 GB/s (A100 SXM4, NVLink 3). PCIe cards have no NVLink figure.

Collective latency (collective_latency_s), the fixed cost of one collective however small,
is an assumed order of magnitude, not a specification (no vendor publishes it):
  TPU      5 us: a collective crosses at least one ICI hop (of order 1 us each) per
           algorithm step and synchronises its group; a few us in all.
  GPU      10 us: NCCL's small-message all-reduce within one NVLink host (nccl-tests'
           all_reduce_perf at a few bytes) takes of order 10 us or more.
It matters for the many tiny collectives of a step (BatchNorm statistics, scalars),
which run one after another (micar_jax.performance.hlo_cost).

A figure the sources do not give is None, and whatever needs it reports "unknown"
rather than a guess. A CPU has no entry: simulated CPU devices share the host's
memory and their speed is nobody's specification (see `cpu_chip`).
"""

import dataclasses
import os

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator chip (for TPU v4/v5p: both TensorCores, i.e. one JAX device).

  Attributes:
    name: short generation name ("v5p", "h100", "cpu").
    kinds: lower-case substrings of jax's `device.device_kind` that mean this chip.
    peak_tflops: dense bf16 peak, TFLOP/s.
    hbm_bytes: device memory, bytes.
    hbm_gbps: device memory bandwidth, GB/s (1e9 bytes/s).
    ici_gbps: inter-chip interconnect bandwidth per chip, one direction, GB/s
      (half the vendor's bidirectional figure).
    tpu: how Cloud TPU names and lays out this chip's slices (None for GPUs).
    collective_latency_s: the fixed time of one collective, seconds (an assumed figure;
      see the module docstring).
  """

  name: str
  kinds: tuple[str, ...]
  peak_tflops: float | None
  hbm_bytes: int | None = None
  hbm_gbps: float | None = None
  ici_gbps: float | None = None
  tpu: "TpuLayout | None" = None
  collective_latency_s: float | None = None


@dataclasses.dataclass(frozen=True)
class TpuLayout:
  """What the planner needs to name and compile a TPU generation's slices.

  Attributes:
    cores_per_chip: 2 where accelerator types count TensorCores (v4-8 = 4 chips), else 1;
      such chips form 3D grids and compile as "megacore", the others 2D grids.
    host_bounds: chips per host (x, y, z) of a full host.
    type_prefix: the accelerator type's prefix ("v5litepod" for v5e).
    aliases: other prefixes a topology name may use for this generation.
  """

  cores_per_chip: int
  host_bounds: tuple[int, int, int]
  type_prefix: str = ""
  aliases: tuple[str, ...] = ()

  @property
  def grid_rank(self) -> int:
    return 3 if self.cores_per_chip == 2 else 2


TPU_LATENCY_S = 5e-6  # assumed (module docstring)
NVLINK_LATENCY_S = 10e-6  # assumed (module docstring)
# Order matters for `by_device_kind`: specific kinds precede their prefixes
# ("tpu v5 lite" before "tpu v5", "h100 pcie" before "h100").
CHIPS: tuple[Chip, ...] = (
    Chip("v4", ("tpu v4",), 275.0, 32 * GIB, 1200.0, 6 * 45.0, TpuLayout(2, (2, 2, 1)),
         TPU_LATENCY_S),
    Chip("v5e", ("tpu v5 lite", "tpu v5e"), 197.0, 16 * GIB, 819.0, 400.0 / 2,
         TpuLayout(1, (2, 4, 1), "v5litepod", ("v5litepod",)), TPU_LATENCY_S),
    Chip("v5p", ("tpu v5p", "tpu v5"), 459.0, 95 * GIB, 2765.0, 1200.0 / 2,
         TpuLayout(2, (2, 2, 1)), TPU_LATENCY_S),
    Chip("v6e", ("tpu v6 lite", "tpu v6e"), 918.0, 32 * GIB, 1638.0, 800.0 / 2,
         TpuLayout(1, (2, 4, 1)), TPU_LATENCY_S),
    Chip("h100-pcie", ("h100 pcie",), 756.0),
    Chip("h100", ("h100",), 989.0, 84942979072, 3352.32, 900.0 / 2,
         collective_latency_s=NVLINK_LATENCY_S),
    Chip("h200", ("h200",), 989.0, 151397597184, 4800.0, 900.0 / 2,
         collective_latency_s=NVLINK_LATENCY_S),
    Chip("a100", ("a100",), 312.0, 85100068864, 2039.04, 600.0 / 2,
         collective_latency_s=NVLINK_LATENCY_S),
)
TPU_GENERATIONS = {c.name: c for c in CHIPS if c.tpu}
# Every name a topology may start with -> its generation's chip.
TPU_PREFIXES = {name: c for c in CHIPS if c.tpu for name in (c.name, *c.tpu.aliases)}


def by_device_kind(device_kind: str) -> Chip | None:
  """The chip whose kind substring first matches `device.device_kind`, or None."""
  kind = device_kind.lower()
  return next((c for c in CHIPS if any(k in kind for k in c.kinds)), None)


def cpu_chip(num_devices: int) -> Chip:
  """Simulated CPU devices: each gets an equal share of the host's memory, no speeds."""
  host_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return Chip("cpu", ("cpu",), None, host_bytes // max(num_devices, 1))
