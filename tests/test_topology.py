"""Topology names as Cloud TPU writes them, the chip table, and the devices to compile for."""

import importlib.util

import jax
import pytest

from micar_jax import errors
from micar_jax.performance import chips, topology

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


@pytest.mark.parametrize("name, generation, shape, accelerator_type", [
    ("v4-8", "v4", (2, 2, 1), "v4-8"),
    ("v5p-64", "v5p", (2, 4, 4), "v5p-64"),
    ("v5p-128", "v5p", (4, 4, 4), "v5p-128"),
    ("V5P-1024", "v5p", (8, 8, 8), "v5p-1024"),
    ("v5e-1", "v5e", (1, 1), "v5litepod-1"),
    ("v5e-8", "v5e", (2, 4), "v5litepod-8"),
    ("v5litepod-16", "v5e", (4, 4), "v5litepod-16"),
    ("v6e-256", "v6e", (16, 16), "v6e-256"),
    ("v5p:4x4x4", "v5p", (4, 4, 4), "v5p-128"),
    ("v6e:2x4", "v6e", (2, 4), "v6e-8"),
])
def test_names_give_cloud_tpu_slice_shapes(name, generation, shape, accelerator_type):
  topo = topology.parse(name)
  assert (topo.chip.name, topo.shape, topo.accelerator_type) == (
      generation, shape, accelerator_type)
  assert topo.is_tpu


def test_v4_and_v5p_names_count_two_cores_per_chip():
  assert topology.parse("v5p-128").num_chips == 64
  assert topology.parse("v4-8").num_chips == 4
  assert topology.parse("v6e-256").num_chips == 256


@pytest.mark.parametrize("name, message", [
    ("v7-8", "unknown topology 'v7-8'"),
    ("tpu", "unknown topology"),
    ("cpu:0", "unknown topology"),
    ("v5p-3", "2 per chip"),
    ("v5e-12", "no slice of 12 chips"),
    ("v5p-4", "no slice of 2 chips"),
    ("v5p:4x4", "a v5p shape has 3 sides"),
])
def test_bad_names_are_one_line_errors(name, message):
  with pytest.raises(errors.UserError, match=message) as info:
    topology.parse(name)
  assert "\n" not in str(info.value)


def test_cpu_topology_takes_this_process_devices():
  topo = topology.parse("cpu:8")
  assert not topo.is_tpu and topo.shape == (8,) and topo.chip.peak_tflops is None
  assert topology.devices(topo) == jax.devices("cpu")[:8]
  with pytest.raises(errors.UserError, match="needs 16 CPU devices but this process has 8"):
    topology.devices(topology.parse("cpu:16"))


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed, so TPU topologies work")
def test_tpu_topology_without_libtpu_names_the_extra():
  with pytest.raises(errors.UserError, match=r'needs libtpu.*pip install -e "\.\[tpu\]"'):
    topology.devices(topology.parse("v5e-8"))


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu (pip install -e '.[tpu]')")
@pytest.mark.parametrize("name, kind", [("v5p-128", "TPU v5"), ("v5e-8", "TPU v5 lite"),
                                        ("v4-8", "TPU v4"), ("v6e:2x4", "TPU v6 lite")])
def test_tpu_topology_gives_one_compile_only_device_per_chip(name, kind):
  topo = topology.parse(name)
  found = topology.devices(topo)
  assert len(found) == topo.num_chips and found[0].device_kind == kind
  assert chips.by_device_kind(kind) is topo.chip


@pytest.mark.parametrize("kind, name", [
    ("TPU v4", "v4"), ("TPU v5 lite", "v5e"), ("TPU v5", "v5p"), ("TPU v5p", "v5p"),
    ("TPU v6 lite", "v6e"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H100 80GB HBM3", "h100"),
])
def test_device_kinds_find_their_chip(kind, name):
  assert chips.by_device_kind(kind).name == name


def test_cpu_chip_shares_host_memory_and_has_no_speeds():
  one, eight = chips.cpu_chip(1), chips.cpu_chip(8)
  assert one.hbm_bytes // 8 == eight.hbm_bytes > 0
  assert (eight.peak_tflops, eight.hbm_gbps, eight.ici_gbps) == (None, None, None)


@pytest.mark.parametrize("generation", sorted(chips.TPU_GENERATIONS))
def test_every_tpu_generation_in_the_chip_table_parses_both_ways(generation):
  layout = chips.TPU_GENERATIONS[generation].tpu
  typed = topology.parse(f"{generation}-{8 * layout.cores_per_chip}")
  assert typed.num_chips == 8 and len(typed.shape) == layout.grid_rank
  shaped = topology.parse(f"{generation}:{'x'.join(map(str, typed.shape))}")
  assert shaped.accelerator_type == typed.accelerator_type
  assert all(b >= 1 for b in layout.host_bounds)
