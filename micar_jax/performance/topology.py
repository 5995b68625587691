"""Topology names as users write them -> devices to compile for, on any host.

  v4-8, v5p-128       Cloud TPU accelerator types of v4/v5p count TensorCores,
                      two per chip: v5p-128 is 64 chips (4x4x4).
  v5e-16, v5litepod-16, v6e-256
                      v5e/v6e types count chips: v6e-256 is 256 chips (16x16).
  v5p:4x4x4, v6e:2x4  a generation and an explicit chip grid.
  cpu:8               8 simulated CPU devices of this process.

A TPU topology needs libtpu (`pip install -e ".[tpu]"`) but no TPU: jax's
`get_topology_desc` returns compile-only devices, enough to lower and compile
a program and read its memory and cost analyses. One JAX device is one chip
(v4 and v5p run their two TensorCores as one "megacore" device).
"""

import dataclasses
import importlib.util
import math
import os
import re

import jax

# Accelerator types whose number counts TensorCores (2 per chip), not chips.
from micar_jax import errors
from micar_jax.performance import chips

# Accelerator types whose number counts TensorCores (2 per chip), not chips.
_CORE_COUNTED = ("v4", "v5p")
_ALIASES = {"v5litepod": "v5e"}
# Chips per host (x, y, z) of a full host; smaller slices use the smaller shape.
_HOST_BOUNDS = {"v4": (2, 2, 1), "v5p": (2, 2, 1), "v5e": (2, 4, 1), "v6e": (2, 4, 1)}
TPU_EXTRA_HINT = 'pip install -e ".[tpu]" (jax[tpu] at the project\'s jax version)'


@dataclasses.dataclass(frozen=True)
class Topology:
  """A parsed topology name.

  Attributes:
    name: as the user wrote it.
    chip: the chip's figures (chips.cpu_chip for "cpu:N").
    shape: the chip grid, e.g. (4, 4, 4); (N,) for CPU devices.
    accelerator_type: the Cloud TPU accelerator type ("v5p-128", "v5litepod-16";
      "" for CPU), as `gcloud compute tpus tpu-vm create` takes it.
  """

  name: str
  chip: chips.Chip
  shape: tuple[int, ...]
  accelerator_type: str

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def is_tpu(self) -> bool:
    return self.chip.name != "cpu"


def grid(generation: str, num_chips: int) -> tuple[int, ...]:
  """The usual slice shape of `num_chips` chips: 2D for v5e/v6e, 3D for v4/v5p.

  Grows from 1x1 (2D) or 2x2x1 (3D) by doubling the last of the smallest sides,
  which gives Cloud TPU's shapes (2x4, 4x4, ..., 16x16; 2x2x2, 2x2x4, 2x4x4, 4x4x4, ...).

  Raises:
    UserError: num_chips is not a power of two that such a slice can have.
  """
  shape = [2, 2, 1] if generation in _CORE_COUNTED else [1, 1]
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
  """Parses "v5p-128", "v5litepod-16", "v6e:16x16" or "cpu:8" (see the module doc).

  Raises:
    UserError: the name is none of these forms (one line).
  """
  text = name.strip().lower()
  cpu = re.fullmatch(r"cpu:([1-9]\d*)", text)
  if cpu:
    n = int(cpu.group(1))
    return Topology(name, chips.cpu_chip(n), (n,), "")
  typed = re.fullmatch(r"([a-z0-9]+)-([1-9]\d*)", text)
  shaped = re.fullmatch(r"([a-z0-9]+):([1-9]\d*(?:x[1-9]\d*){1,2})", text)
  match = typed or shaped
  generation = _ALIASES.get(match.group(1), match.group(1)) if match else ""
  if generation not in chips.TPU_GENERATIONS:
    known = ", ".join(chips.TPU_GENERATIONS)
    raise errors.UserError(
        f"unknown topology {name!r}; expected GEN-N (e.g. v5p-128, v5e-16, v6e-256), "
        f"GEN:AxB[xC] (e.g. v5p:4x4x4) or cpu:N, with GEN one of {known}")
  if typed:
    count = int(typed.group(2))
    if generation in _CORE_COUNTED and count % 2:
      raise errors.UserError(f"{name}: {generation} types count TensorCores, 2 per chip; "
                             "use an even number")
    shape = grid(generation, count // 2 if generation in _CORE_COUNTED else count)
  else:
    shape = tuple(int(s) for s in shaped.group(2).split("x"))
    if len(shape) != (3 if generation in _CORE_COUNTED else 2):
      raise errors.UserError(f"{name}: a {generation} shape has "
                             f"{3 if generation in _CORE_COUNTED else 2} sides")
  num = math.prod(shape) * (2 if generation in _CORE_COUNTED else 1)
  prefix = "v5litepod" if generation == "v5e" else generation
  return Topology(name, chips.TPU_GENERATIONS[generation], shape, f"{prefix}-{num}")


def quiet_libtpu(topology: Topology) -> None:
  """Prepares libtpu for compiling only (values already set are kept).

  Sets what libtpu otherwise warns about on a host without TPUs, and lets
  several processes load it at once (it compiles; it never claims a chip).
  Must run before libtpu loads.
  """
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def devices(topology: Topology) -> list[jax.Device]:
  """The devices to compile for: compile-only TPU devices, or this process's CPU devices.

  Raises:
    UserError: libtpu is not installed (TPU), or the process has too few CPU devices.
  """
  if not topology.is_tpu:
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
  generation = topology.chip.name
  padded = topology.shape + (1,) * (3 - len(topology.shape))
  bounds = tuple(min(s, b) for s, b in zip(padded, _HOST_BOUNDS[generation]))
  desc = topologies.get_topology_desc(
      topology_name=f"{generation}:{'x'.join(map(str, topology.shape))}", platform="tpu",
      chip_config_name="megacore" if generation in _CORE_COUNTED else "default",
      chips_per_host_bounds=bounds)
  return list(desc.devices)
