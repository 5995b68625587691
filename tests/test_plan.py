"""micar_jax.performance.plan: the real train step and decoder compiled for a topology, read back.

The default tests compile for `cpu:8` (this process's 8 simulated devices) at
the tiny config and check the plan's figures against XLA's own analyses of the
same program; the slow one compiles for a TPU topology (needs libtpu).
"""

import importlib.util
import json
import subprocess
import sys

import jax
import pytest

from micar_jax.config import defaults
from micar_jax.core import sharding, summary
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.models import partitioning
from micar_jax.performance import chips, hlo_cost, plan, topology
from micar_jax.training import optim, steps

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
TINY = ["--config=configs/mmr.py:tiny", "--config.data.text_seq_len=8"]


def tiny_config(**mesh):
  c = defaults.tiny(defaults.base_config())
  c.data.text_seq_len = 8
  c.train.batch_size = c.eval.batch_size = 8
  for axis in partitioning.MESH_AXES:
    c.mesh[axis] = mesh.get(axis, 1)
  return c


@pytest.fixture(scope="module")
def cpu8_plan():
  config = tiny_config(data=4, fsdp=2)
  return config, plan.plan(config, topology.parse("cpu:8"))


def test_train_memory_is_what_xla_reports_for_the_train_step_on_real_arrays(cpu8_plan):
  config, result = cpu8_plan
  mc = plan.model_config(config)
  mesh = sharding.make_mesh(config, jax.devices()[:8])
  rules = partitioning.logical_rules()
  tx = optim.make_optimizer(config, 1)
  spec = batch_spec.BatchSpec.from_config(config)
  state, shardings = sharding.init_sharded(state_lib.make_init_fn(mc, tx, spec), mesh, rules,
                                           jax.random.PRNGKey(0))
  shapes = spec.abstract(sharding.batch_sharding(mesh))
  batch = {k: jax.numpy.zeros(v.shape, v.dtype, device=v.sharding) for k, v in shapes.items()}
  with partitioning.use_mesh(mesh, rules):
    compiled = steps.jit_train_step(mc, tx, config, shardings, mesh).lower(state, batch).compile()
  m = compiled.memory_analysis()
  got = result["train"]["memory_bytes"]
  assert (got["arguments"], got["outputs"], got["temporaries"], got["aliased"]) == (
      m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes,
      m.alias_size_in_bytes)
  assert got["total"] == (m.argument_size_in_bytes + m.output_size_in_bytes
                          + m.temp_size_in_bytes - m.alias_size_in_bytes)
  # The donated state is aliased to the new state.
  assert got["aliased"] > 0
  # The per-op estimate is read from this very program's optimised HLO.
  estimate = hlo_cost.estimate(compiled.as_text(), chips.cpu_chip(8), 8)
  assert result["train"]["estimate"]["flops"] == estimate.flops > 0
  assert result["train"]["estimate"]["hbm_bytes"] == estimate.hbm_bytes > 0


def test_plan_reports_flops_collectives_and_the_decoder(cpu8_plan):
  config, result = cpu8_plan
  train_result = result["train"]
  assert train_result["mesh"] == {"data": 4, "fsdp": 2, "expert": 1, "tensor": 1}
  assert train_result["model_flops"] == 8 * summary.model_flops_per_image(
      plan.model_config(config), batch_spec.BatchSpec.from_config(config))
  kinds = {c["kind"]: c for c in train_result["collectives"]}
  # Gradients are reduced over the batch axes; fsdp-sharded weights are gathered.
  assert kinds["all-reduce"]["count"] > 0 and kinds["all-gather"]["count"] > 0
  assert all(c["sent"] > 0 for c in kinds.values())
  assert train_result["fits"] is True and train_result["need_bytes"] > 0
  # A CPU has no speed figures: no time is estimated rather than guessed; the regions
  # are still named, by HBM bytes.
  estimate = train_result["estimate"]
  assert estimate["step_s"] is None and estimate["mfu"] is None and estimate["flops"] > 0
  regions = estimate["top_regions"]
  assert len(regions) == 10 and all(r["time_s"] is None for r in regions)
  assert regions[0]["hbm_bytes"] >= regions[-1]["hbm_bytes"] > 0
  decode = result["decode"]
  assert decode["batch_size"] == 8 and decode["method"] == "greedy"
  assert decode["memory_bytes"]["arguments"] > 0 and decode["fits"] is True


def test_meshes_split_the_chips_the_experts_and_the_batch():
  found = plan.meshes(8, num_experts=4, batch_size=4)
  assert (8, 1, 1, 1) not in found  # a batch of 4 does not split 8 ways
  assert (1, 1, 4, 2) in found and (2, 2, 1, 2) in found
  assert all(d * f * e * t == 8 and 4 % e == 0 and 4 % (d * f * e) == 0
             for d, f, e, t in found)
  assert len(found) == len(set(found))
  assert plan.meshes(8, 4, 8, axes=("data", "fsdp")) == [(1, 8, 1, 1), (2, 4, 1, 1),
                                                         (4, 2, 1, 1), (8, 1, 1, 1)]


def test_shortfall_names_what_is_missing():
  topo = {"name": "v5e-8", "chip": {"name": "v5e", "hbm_bytes": 16 * 2**30}}
  over = {"topology": topo, "train": {"fits": False, "error": None, "need_bytes": 20 * 2**30}}
  assert plan.shortfall(over) == (
      "the train step needs 20.00 GiB per chip on v5e-8 (v5e, 16.0 GiB per chip), 4.00 GiB "
      "short; try micar_jax.plan --search, remat or a larger topology")
  fits = {"topology": topo, "train": {"fits": True, "error": None, "need_bytes": 2**30}}
  assert plan.shortfall(fits) is None


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "micar_jax.plan", *TINY, *args],
                        capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_search_ranks_meshes_and_prints_the_commands_that_launch_them():
  out = run_cli("--topology=cpu:2", "--search", "--batch_sizes=2", "--search_axes=data,fsdp",
                "--nodecode", "--config.model.num_experts=2")
  assert out.returncode == 0, out.stderr
  result = json.loads(out.stdout.splitlines()[-1])
  # data=2 or fsdp=2: both split a batch of 2 and fit.
  assert result["compiled"] == 2 and result["fit"] == 2
  assert {tuple(c["mesh"].values()) for c in result["ranked"]} == {(2, 1, 1, 1), (1, 2, 1, 1)}
  first = result["ranked"][0]
  assert first["command"].startswith("python -m micar_jax.main " + " ".join(TINY))
  assert "--config.model.num_experts=2" in first["command"]
  assert f"--config.mesh.data={first['mesh']['data']}" in first["command"]
  assert "--config.train.batch_size=2" in first["command"]
  assert first["command"] in out.stdout


@pytest.mark.parametrize("args, message", [
    (["--topology=v9-8"], "error: unknown topology 'v9-8'"),
    (["--topology=cpu:8", "--config.mesh.data=3"], "error: config.mesh"),
    (["--topology=cpu:8", "--config.train.batch_size=6"], "error: train.batch_size=6 does not split"),
])
def test_bad_input_is_one_line(args, message):
  out = run_cli(*args)
  assert out.returncode == 2
  assert out.stderr.strip().startswith(message) and "\n" not in out.stderr.strip()


@pytest.mark.skipif(HAS_LIBTPU, reason="libtpu is installed, so TPU topologies compile")
def test_tpu_topology_without_libtpu_names_the_extra():
  out = run_cli("--topology=v5p-8")
  assert out.returncode == 2
  assert 'pip install -e ".[tpu]"' in out.stderr and "\n" not in out.stderr.strip()


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu: pip install -e '.[tpu]'")
def test_tpu_topology_compiles_with_estimates_and_no_libtpu_noise():
  out = run_cli("--topology=v5e-8", "--config.mesh.data=4", "--config.mesh.fsdp=2",
                "--config.train.batch_size=8", "--config.model.dtype=bfloat16")
  assert out.returncode == 0, out.stderr
  assert "TPU_ACCELERATOR_TYPE" not in out.stderr and "TPU_WORKER" not in out.stderr
  result = json.loads(out.stdout.splitlines()[-1])
  assert result["topology"]["device_kind"] == "TPU v5 lite"
  train_result = result["train"]
  assert train_result["fits"] is True
  assert train_result["memory_bytes"]["total"] < 16 * 2**30
  estimate = train_result["estimate"]
  # The step is the sum over ops, each counted under the bound that set its time.
  assert estimate["step_s"] == pytest.approx(sum(estimate["by_bound_s"].values()))
  assert estimate["by_bound_s"]["latency"] > 0  # the tiny step's many small collectives
  assert 0 < estimate["mfu"] < 1
  assert "ESTIMATE" in out.stdout and "top regions (est.)" in out.stdout
