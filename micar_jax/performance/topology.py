"""Topology names as users write them -> devices to compile for, on any host.

  v4-8, v5p-128       Cloud TPU accelerator types of v4/v5p count TensorCores,
                      two per chip: v5p-128 is 64 chips (4x4x4).
  v5e-16, v5litepod-16, v6e-256
                      v5e/v6e types count chips: v6e-256 is 256 chips (16x16).
  v5p:4x4x4, v6e:2x4  a generation and an explicit chip grid.
  h100, h200, a100    one NVIDIA GPU (H100 SXM 80GB, H200, A100 SXM4 80GB).
  h200x8, a100x4      one host with 8 (4) such GPUs, joined by NVLink.
  cpu:8               8 simulated CPU devices of this process.

A TPU topology needs libtpu (`pip install -e ".[tpu]"`) but no TPU: jax's
`get_topology_desc` returns compile-only devices, enough to lower and compile
a program and read its memory and cost analyses. One JAX device is one chip
(v4 and v5p run their two TensorCores as one "megacore" device).

A GPU topology needs the CUDA plugin (`pip install -e ".[gpu]"`) but no GPU,
driver or CUDA libraries: `get_topology_desc(platform="cuda")` makes the
compile-only devices from an XLA GPU target (gpu_targets/<gpu>.txtpb, the
device's limits as XLA's own specs give them). It gives memory analyses;
XLA's GPU compiler has no cost analysis.
"""

import dataclasses
import importlib.util
import math
import os
import re

import jax

from micar_jax import errors
from micar_jax.performance import chips

TPU_EXTRA_HINT = 'pip install -e ".[tpu]" (jax[tpu] at the project\'s jax version)'
GPU_EXTRA_HINT = ('pip install -e ".[gpu]" (jax-cuda12-plugin and jax-cuda12-pjrt at the '
                  'project\'s jax version)')
# The modules of those two packages: the plugin jax discovers, and the CUDA extensions it loads.
GPU_PLUGIN_MODULES = ("jax_plugins.xla_cuda12", "jax_cuda12_plugin")
GPU_TARGETS_DIR = os.path.join(os.path.dirname(__file__), "gpu_targets")
# The GPUs a topology may name: those with a target in GPU_TARGETS_DIR.
GPUS = {c.name: c for c in chips.CHIPS if c.name in ("h100", "h200", "a100")}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A parsed topology name.

  Attributes:
    name: as the user wrote it.
    chip: the chip's figures (chips.cpu_chip for "cpu:N").
    shape: the chip grid, e.g. (4, 4, 4); (1, 1, N) for a host of N GPUs (slices x
      hosts x GPUs per host, as XLA's GPU topologies count); (N,) for CPU devices.
    accelerator_type: the Cloud TPU accelerator type ("v5p-128", "v5litepod-16";
      "" for GPU and CPU), as `gcloud compute tpus tpu-vm create` takes it.
  """

  name: str
  chip: chips.Chip
  shape: tuple[int, ...]
  accelerator_type: str

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def platform(self) -> str:
    """"tpu", "gpu" or "cpu": the compiler the devices are for."""
    if self.chip.tpu:
      return "tpu"
    return "cpu" if self.chip.name == "cpu" else "gpu"

  @property
  def is_tpu(self) -> bool:
    return self.platform == "tpu"


def grid(generation: str, num_chips: int) -> tuple[int, ...]:
  """The usual slice shape of `num_chips` chips: 2D for v5e/v6e, 3D for v4/v5p.

  Grows from 1x1 (2D) or 2x2x1 (3D) by doubling the last of the smallest sides,
  which gives Cloud TPU's shapes (2x4, 4x4, ..., 16x16; 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...).

  Raises:
    UserError: num_chips is not a power of two that such a slice can have.
  """
  shape = [2, 2, 1] if chips.TPU_GENERATIONS[generation].tpu.grid_rank == 3 else [1, 1]
  if num_chips < math.prod(shape) or num_chips & (num_chips - 1):
    raise errors.UserError(
        f"{generation} has no slice of {num_chips} chips; use a power of two >= "
        f"{math.prod(shape)} or give the shape, e.g. {generation}:{'x'.join(map(str, shape))}")
  while math.prod(shape) < num_chips:
    smallest = min(shape)
    i = max(j for j, s in enumerate(shape) if s == smallest)
    shape[i] *= 2
  return tuple(shape)


def parse(name: str) -> Topology:
  """Parses "v5p-128", "v5litepod-16", "v6e:16x16", "h200x8" or "cpu:8" (see the module doc).

  Raises:
    UserError: the name is none of these forms (one line).
  """
  text = name.strip().lower()
  cpu = re.fullmatch(r"cpu:([1-9]\d*)", text)
  if cpu:
    n = int(cpu.group(1))
    return Topology(name, chips.cpu_chip(n), (n,), "")
  gpu = re.fullmatch(rf"({'|'.join(GPUS)})(?:x([1-9]\d*))?", text)
  if gpu:
    return Topology(name, GPUS[gpu.group(1)], (1, 1, int(gpu.group(2) or 1)), "")
  typed = re.fullmatch(r"([a-z0-9]+)-([1-9]\d*)", text)
  shaped = re.fullmatch(r"([a-z0-9]+):([1-9]\d*(?:x[1-9]\d*){1,2})", text)
  match = typed or shaped
  chip = chips.TPU_PREFIXES.get(match.group(1)) if match else None
  if chip is None:
    known = ", ".join(chips.TPU_GENERATIONS)
    raise errors.UserError(
        f"unknown topology {name!r}; expected GEN-N (e.g. v5p-128, v5e-16, v6e-256), "
        f"GEN:AxB[xC] (e.g. v5p:4x4x4), GPU or GPUxN for one host of N GPUs (e.g. h200, "
        f"h100x8) or cpu:N, with GEN one of {known} and GPU one of {', '.join(GPUS)}")
  generation, layout = chip.name, chip.tpu
  if typed:
    count = int(typed.group(2))
    if count % layout.cores_per_chip:
      raise errors.UserError(f"{name}: {generation} types count TensorCores, "
                             f"{layout.cores_per_chip} per chip; use a multiple of it")
    shape = grid(generation, count // layout.cores_per_chip)
  else:
    shape = tuple(int(s) for s in shaped.group(2).split("x"))
    if len(shape) != layout.grid_rank:
      raise errors.UserError(f"{name}: a {generation} shape has {layout.grid_rank} sides")
  num = math.prod(shape) * layout.cores_per_chip
  return Topology(name, chip, shape, f"{layout.type_prefix or generation}-{num}")


def quiet_libtpu(topology: Topology) -> None:
  """Prepares libtpu for compiling only (values already set are kept).

  Sets what libtpu otherwise warns about on a host without TPUs, and lets
  several processes load it at once (it compiles; it never claims a chip).
  Must run before libtpu loads.
  """
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _installed(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # its parent package is missing
    return False


def gpu_target(gpu: str) -> str:
  """The XLA GPU target (GpuTargetConfigProto text) of a GPU in GPUS."""
  with open(os.path.join(GPU_TARGETS_DIR, f"{gpu}.txtpb")) as f:
    return f.read()


def gpu_devices(topology: Topology) -> list[jax.Device]:
  """Compile-only devices of a host of `topology.num_chips` GPUs.

  Raises:
    UserError: the CUDA plugin is not installed.
  """
  if not all(_installed(m) for m in GPU_PLUGIN_MODULES):
    raise errors.UserError(f"topology {topology.name} needs the CUDA plugin, which is not "
                           f"installed: {GPU_EXTRA_HINT}; cpu:N topologies work without it")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  desc = topologies.get_topology_desc(
      topology_name="", platform="cuda", target_config=gpu_target(topology.chip.name),
      topology="x".join(map(str, topology.shape)))
  return list(desc.devices)


def devices(topology: Topology) -> list[jax.Device]:
  """The devices to compile for: compile-only TPU or GPU devices, or this process's CPU devices.

  Raises:
    UserError: libtpu (TPU) or the CUDA plugin (GPU) is not installed, or the
      process has too few CPU devices.
  """
  if topology.platform == "gpu":
    return gpu_devices(topology)
  if topology.platform == "cpu":
    cpus = jax.devices("cpu")
    if len(cpus) < topology.num_chips:
      raise errors.UserError(
          f"{topology.name} needs {topology.num_chips} CPU devices but this process has "
          f"{len(cpus)}; start it with XLA_FLAGS=--xla_force_host_platform_device_count="
          f"{topology.num_chips}")
    return cpus[:topology.num_chips]
  if importlib.util.find_spec("libtpu") is None:
    raise errors.UserError(f"topology {topology.name} needs libtpu, which is not installed: "
                           f"{TPU_EXTRA_HINT}; cpu:N topologies work without it")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  quiet_libtpu(topology)
  generation, layout = topology.chip.name, topology.chip.tpu
  padded = topology.shape + (1,) * (3 - len(topology.shape))
  # Smaller slices than a full host use their own, smaller shape.
  bounds = tuple(min(s, b) for s, b in zip(padded, layout.host_bounds))
  desc = topologies.get_topology_desc(
      topology_name=f"{generation}:{'x'.join(map(str, topology.shape))}", platform="tpu",
      chip_config_name="megacore" if layout.cores_per_chip == 2 else "default",
      chips_per_host_bounds=bounds)
  return list(desc.devices)
