"""GPU topologies of micar_jax.performance.plan: names, XLA GPU targets, compile-only devices.

Names, targets and the missing-plugin error need nothing installed; the
devices and the compile need the `gpu` extra (the CUDA plugin, no GPU).
"""

import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from micar_jax import errors
from micar_jax.performance import chips, topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_GPU_PLUGIN = all(topology._installed(m) for m in topology.GPU_PLUGIN_MODULES)
NEEDS_PLUGIN = pytest.mark.skipif(not HAS_GPU_PLUGIN,
                                  reason='needs the gpu extra: pip install -e ".[gpu]"')
# What each target's devices call themselves: the kind CUDA reports for the real GPU.
KINDS = {"h100": "NVIDIA H100 80GB HBM3", "h200": "NVIDIA H200 141GB HBM3e",
         "a100": "NVIDIA A100-SXM4-80GB"}
DEVICE_INFO_FIELDS = {
    "threads_per_block_limit", "threads_per_warp", "shared_memory_per_block",
    "shared_memory_per_core", "threads_per_core_limit", "core_count", "fpus_per_core",
    "block_dim_limit_x", "block_dim_limit_y", "block_dim_limit_z", "memory_bandwidth",
    "l2_cache_size", "clock_rate_ghz", "device_memory_size", "shared_memory_per_block_optin",
    "cuda_compute_capability", "registers_per_core_limit", "registers_per_block_limit"}


def parse_text_proto(text: str) -> dict:
  """A protobuf text-format message as nested dicts; fails on anything malformed (or a
  repeated field, which these targets have none of)."""
  body = re.sub(r"(?m)^\s*#.*$", "", text)
  tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}:]|[^\s{}:"]+', body)

  def value(token):
    if token.startswith('"'):
      return json.loads(token)
    if re.fullmatch(r"[A-Z_]+", token):  # an enum
      return token
    return float(token) if "." in token else int(token)

  def message(i):
    out = {}
    while i < len(tokens) and tokens[i] != "}":
      key = tokens[i]
      assert re.fullmatch(r"[a-z_][a-z0-9_]*", key) and key not in out, key
      if tokens[i + 1] == ":":
        out[key], i = value(tokens[i + 2]), i + 3
      else:
        assert tokens[i + 1] == "{", key
        out[key], i = message(i + 2)
        assert tokens[i] == "}", key
        i += 1
    return out, i

  parsed, end = message(0)
  assert end == len(tokens), "unbalanced }"
  return parsed


@pytest.mark.parametrize("name, gpu, shape", [
    ("h100", "h100", (1, 1, 1)), ("H200", "h200", (1, 1, 1)), ("a100", "a100", (1, 1, 1)),
    ("h100x8", "h100", (1, 1, 8)), ("h200x8", "h200", (1, 1, 8)), ("a100x4", "a100", (1, 1, 4)),
    ("h200x1", "h200", (1, 1, 1)),
])
def test_gpu_names_are_one_host_of_n_gpus(name, gpu, shape):
  topo = topology.parse(name)
  assert (topo.chip.name, topo.shape, topo.num_chips) == (gpu, shape, shape[-1])
  assert topo.platform == "gpu" and not topo.is_tpu and topo.accelerator_type == ""


def test_every_topology_names_its_platform():
  assert topology.parse("v5p-8").platform == "tpu"
  assert topology.parse("cpu:4").platform == "cpu"
  assert topology.parse("h100x2").platform == "gpu"


@pytest.mark.parametrize("name", ["h300", "h100x0", "h100-8", "h100:8", "h100x", "xh100",
                                  "h100-pcie"])
def test_bad_gpu_names_are_one_line_errors_listing_the_forms(name):
  with pytest.raises(errors.UserError, match="unknown topology") as info:
    topology.parse(name)
  message = str(info.value)
  assert "\n" not in message
  assert "GPUxN" in message and "h100, h200, a100" in message and "cpu:N" in message


@pytest.mark.parametrize("missing", topology.GPU_PLUGIN_MODULES)
def test_gpu_topology_without_the_plugin_names_the_extra(monkeypatch, missing):
  find_spec = importlib.util.find_spec

  def without(name, *args):
    if name == missing:
      return None
    return find_spec(name, *args)

  monkeypatch.setattr(importlib.util, "find_spec", without)
  with pytest.raises(errors.UserError, match=r'needs the CUDA plugin.*pip install -e "\.\[gpu\]"') \
      as info:
    topology.devices(topology.parse("h200x8"))
  assert "\n" not in str(info.value)


def test_a_missing_plugin_package_counts_as_not_installed(monkeypatch):
  def absent(name, *args):
    raise ModuleNotFoundError(name)

  monkeypatch.setattr(importlib.util, "find_spec", absent)
  assert not topology._installed("jax_plugins.xla_cuda12")


@pytest.mark.parametrize("gpu", sorted(topology.GPUS))
def test_gpu_targets_parse_and_agree_with_the_chip_table(gpu):
  text = topology.gpu_target(gpu)
  assert "github.com/openxla/xla" in text and "target_config/specs/" in text  # the source
  target = parse_text_proto(text)
  chip = topology.GPUS[gpu]
  assert target["platform_name"] == "CUDA"
  assert target["device_description_str"] == KINDS[gpu]
  assert chips.by_device_kind(target["device_description_str"]) is chip
  info = target["gpu_device_info"]
  assert DEVICE_INFO_FIELDS <= set(info)
  assert info["device_memory_size"] == chip.hbm_bytes
  assert info["memory_bandwidth"] == pytest.approx(chip.hbm_gbps * 1e9)
  assert set(target["dnn_version_info"]) == {"major", "minor", "patch"}


def test_gpu_chips_have_memory_figures_and_nvlink():
  h100, h200, a100 = (topology.GPUS[n] for n in ("h100", "h200", "a100"))
  assert round(h100.hbm_bytes / chips.GIB, 1) == 79.1 and h100.hbm_gbps == 3352.32
  assert round(h200.hbm_bytes / chips.GIB, 1) == 141.0 and h200.hbm_gbps == 4800.0
  assert round(a100.hbm_bytes / chips.GIB, 1) == 79.3 and a100.hbm_gbps == 2039.04
  assert (h100.ici_gbps, h200.ici_gbps, a100.ici_gbps) == (450.0, 450.0, 300.0)


def test_targets_ship_with_the_package_and_the_extra_pins_jax():
  with open(os.path.join(ROOT, "pyproject.toml")) as f:
    pyproject = f.read()
  assert '"micar_jax.performance" = ["gpu_targets/*.txtpb"]' in pyproject
  assert sorted(os.listdir(topology.GPU_TARGETS_DIR)) == sorted(
      f"{g}.txtpb" for g in topology.GPUS)
  tpu = re.search(r'^tpu = \["jax\[tpu\]==([\d.]+)"\]', pyproject, re.M).group(1)
  assert re.search(rf'^gpu = \["jax-cuda12-plugin=={tpu}", "jax-cuda12-pjrt=={tpu}"\]',
                   pyproject, re.M)


@NEEDS_PLUGIN
@pytest.mark.parametrize("name", ["h200", "h100x8", "a100x4"])
def test_gpu_topology_gives_one_compile_only_device_per_gpu(name):
  topo = topology.parse(name)
  found = topology.devices(topo)
  assert len(found) == topo.num_chips
  assert {d.device_kind for d in found} == {KINDS[topo.chip.name]}
  assert chips.by_device_kind(found[0].device_kind) is topo.chip


@NEEDS_PLUGIN
def test_plan_compiles_the_tiny_train_step_for_an_h200():
  # A fresh process: the compiler flags plan sets for GPU topologies apply only before
  # jax loads the CUDA plugin, which this test process has done already.
  out = subprocess.run(
      [sys.executable, "-m", "micar_jax.plan", "--config=configs/synthetic.py:tiny",
       "--topology=h200", "--nodecode"],
      capture_output=True, text=True, timeout=1800, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.splitlines()[-1])
  topo, train = result["topology"], result["train"]
  assert (topo["platform"], topo["device_kind"]) == ("gpu", KINDS["h200"])
  assert topo["chip"]["hbm_bytes"] == topology.GPUS["h200"].hbm_bytes
  memory = train["memory_bytes"]
  assert memory["arguments"] > 0 and memory["total"] > 0 and train["need_bytes"] > 0
  assert train["fits"] is True
  assert "h200: 1 x NVIDIA H200 141GB HBM3e" in out.stdout and "-> fits" in out.stdout
