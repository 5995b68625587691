"""Will it fit? Compiles the real train step and decoder for a topology, without the hardware.

  python -m micar_jax.plan --config=configs/mmr.py --topology=v5p-128 \
      [--config.mesh.fsdp=8 ...] [--config.train.batch_size=64] [--search] \
      [--batch_sizes=32,64] [--require_fit]

Topologies: v4-8, v5e-16 (= v5litepod-16), v5p-128, v6e-256, v5p:4x4x4,
h100, h200, a100, h100x8 (one host of 8 GPUs), cpu:8 (see
micar_jax.performance.topology). A TPU topology needs the `tpu` extra
(`pip install -e ".[tpu]"`), no TPU; a GPU topology the `gpu` extra
(`pip install -e ".[gpu]"`), no GPU.

The train step is the one training jits (micar_jax.training.steps.jit_train_step: same
function, shardings and donation) and the decoder the one evaluation runs
(config.eval.decode at config.eval.batch_size), both lowered on abstract
inputs (ShapeDtypeStructs of micar_jax.data.batch_spec's BatchSpec) and
compiled for the topology's devices. Prints a table and then one JSON object
(one line) with, per program: per-device bytes from XLA's memory analysis
(arguments, outputs, temporaries, aliased, code, the total of the data
buffers and XLA's peak) against the chip's memory; every collective of the
optimised HLO; a per-op roofline estimate read from that HLO (FLOPs, HBM bytes,
the step time as the sum over ops, its top regions; micar_jax.performance.hlo_cost;
estimates, labelled so); for the train step the model's own FLOPs
(micar_jax.models.flops) and the images/s and MFU the estimate implies.

--search compiles the train step for every mesh (data x fsdp x expert x
tensor = chips, expert dividing num_experts, batch split over data x fsdp x
expert; --search_axes limits which axes may exceed 1) at each of
--batch_sizes and ranks those that fit by estimated step
time (by memory where the chip has no speed figures, e.g. CPU), printing the
top 5 with the `python -m micar_jax.main` overrides that launch each.

--require_fit exits 2 with one line naming the shortfall when the train step
does not fit (launch/tpu.sh runs the plan this way before creating a VM).
"""

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import flags
from jax.sharding import Mesh

from micar_jax import cli, decode, errors
from micar_jax.config import defaults
from micar_jax.core import sharding, summary
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning
from micar_jax.performance import chips, collectives, hlo_cost, plan_report, stack_limit
from micar_jax.performance import topology as topology_lib
from micar_jax.training import memory_check, optim, steps

FLAGS = flags.FLAGS
TOP = 5


def define_flags() -> None:
  """Declared only when run as a program, so importing this module defines no flags."""
  cli.define_config_flag()
  flags.DEFINE_string("topology", None,
                      "v5p-128, v5e-16, v6e-256, v5p:4x4x4, h200, h100x8, cpu:8, ...")
  flags.DEFINE_bool("search", False, "Rank every mesh at each of --batch_sizes.")
  cli.define_int_list("batch_sizes", [], "Global batch sizes for --search "
                      "(default: config.train.batch_size).")
  flags.DEFINE_list("search_axes", list(partitioning.MESH_AXES),
                    "Mesh axes --search may make larger than 1 (fewer axes, fewer compiles).")
  flags.DEFINE_bool("decode", True, "Also compile the decoder (config.eval).")
  flags.DEFINE_bool("require_fit", False, "Exit 2 (one line) when the train step does not fit.")
  flags.mark_flags_as_required(["topology"])


@dataclasses.dataclass
class Program:
  """What one compiled program needs and costs (per device)."""

  compile_s: float
  memory: dict[str, int] | None
  estimate: hlo_cost.Estimate | None
  collectives: list[collectives.Collective]
  error: str | None = None

  def need(self) -> int | None:
    """Bytes one device needs: XLA's peak, or arguments + outputs + temporaries - aliased,
    whichever is larger."""
    if not self.memory:
      return None
    return max(self.memory["total"], self.memory.get("peak") or 0)


def analyse(lowered: Any, num_devices: int, chip: chips.Chip) -> Program:
  """Compiles a lowered program and reads its memory, its per-op cost on `chip` and its
  collectives."""
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    text = " ".join(str(e).split())
    if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
      raise
    return Program(time.perf_counter() - start, None, None, [], error=text[:400])
  compile_s = time.perf_counter() - start
  hlo = compiled.as_text()
  return Program(compile_s, memory_check.memory_breakdown(compiled),
                 hlo_cost.estimate(hlo, chip, num_devices), collectives.parse(hlo, num_devices))


def plan_train(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig,
               mesh: Mesh, chip: chips.Chip) -> Program:
  """Compiles the train step exactly as training jits it, on abstract state and batch
  (config.train.batch_size rows)."""
  # The schedule's steps per epoch change no shape; 1 stands in for the dataset's.
  tx = optim.make_optimizer(config, 1)
  lowered = steps.lower_train_step(mc, tx, config, mesh, partitioning.logical_rules(),
                                   batch_spec.BatchSpec.from_config(config))
  return analyse(lowered, mesh.size, chip)


def plan_decode(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig,
                mesh: Mesh, chip: chips.Chip) -> tuple[Program, int]:
  """Compiles config.eval.decode for a padded config.eval.batch_size; (program, batch)."""
  rules = partitioning.logical_rules()
  spec = batch_spec.BatchSpec.from_config(config, batch_size=config.eval.batch_size)
  init = state_lib.make_variables_init_fn(mc, spec)
  variables = sharding.abstract_sharded(init, mesh, rules, jax.random.PRNGKey(0))
  # Evaluation pads its batches to a multiple of the batch shards (Run.put).
  spec = spec.padded(sharding.batch_shards(mesh))
  images = spec.abstract(sharding.batch_sharding(mesh), keys=("images",))["images"]
  generate = decode.make_generate_fn(mc, config.eval)
  with partitioning.use_mesh(mesh, rules):
    lowered = generate.lower(variables["params"], variables["batch_stats"], images)
  return analyse(lowered, mesh.size, chip), spec.batch_size


def model_config(config: ml_collections.ConfigDict) -> model_lib.ModelConfig:
  """The ModelConfig; without a tokenizer the vocabulary is config.model.vocab_size or MMR's."""
  return model_lib.ModelConfig.from_config(config,
                                           config.model.vocab_size or defaults.DEFAULT_VOCAB)


def _mesh(config: ml_collections.ConfigDict, devices: list[jax.Device]) -> Mesh:
  if config.mesh.num_devices and config.mesh.num_devices != len(devices):
    raise errors.UserError(f"config.mesh.num_devices={config.mesh.num_devices} but the "
                           f"topology has {len(devices)} chips; leave it 0")
  return sharding.make_mesh(config, devices)


def _check_batch(spec: batch_spec.BatchSpec, mesh: Mesh) -> None:
  problem = spec.divisibility_problem(sharding.batch_shards(mesh))
  if problem:
    raise errors.UserError(problem)


def program_json(program: Program, hbm_bytes: int | None, batch_size: int | None = None,
                 model_flops: float | None = None, num_devices: int = 1) -> dict[str, Any]:
  """One program's figures; fits is None when the chip's memory is unknown. The estimate's
  images/s and MFU need the (global) batch and model FLOPs per step."""
  need = program.need()
  return {
      "compile_s": round(program.compile_s, 3), "memory_bytes": program.memory,
      "need_bytes": need, "fits": (need <= hbm_bytes if need and hbm_bytes else
                                   (False if program.error else None)),
      "error": program.error,
      "estimate": None if program.estimate is None else program.estimate.summary(
          batch_size, model_flops, num_devices),
      "collectives": [dataclasses.asdict(c) for c in program.collectives],
  }


def train_json(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig,
               topo: topology_lib.Topology, mesh: Mesh,
               program: Program, flops_per_image: float) -> dict[str, Any]:
  """The train step's figures, with the estimate's images/s and MFU."""
  batch = config.train.batch_size
  out = program_json(program, topo.chip.hbm_bytes, batch, flops_per_image * batch, mesh.size)
  out["batch_size"] = batch
  out["mesh"] = dict(mesh.shape)
  out["model_flops"] = flops_per_image * batch
  return out


def plan(config: ml_collections.ConfigDict, topo: topology_lib.Topology,
         with_decode: bool = True) -> dict[str, Any]:
  """Compiles the train step (and the decoder) for `topo`; the JSON-ready result."""
  start = time.perf_counter()
  mc = model_config(config)
  mesh = _mesh(config, topology_lib.devices(topo))
  spec = batch_spec.BatchSpec.from_config(config)
  _check_batch(spec, mesh)
  flops_per_image = summary.model_flops_per_image(mc, spec)
  train = train_json(config, mc, topo, mesh, plan_train(config, mc, mesh, topo.chip),
                     flops_per_image)
  decode = None
  if with_decode:
    decode_program, decode_batch = plan_decode(config, mc, mesh, topo.chip)
    decode = program_json(decode_program, topo.chip.hbm_bytes)
    decode.update(batch_size=decode_batch, method=config.eval.decode)
  return {"topology": topology_json(topo, mesh.devices.flat[0]), "model": model_json(mc),
          "train": train, "decode": decode, "estimate_note": hlo_cost.NOTE,
          "plan_s": round(time.perf_counter() - start, 3)}


def topology_json(topo: topology_lib.Topology, device: jax.Device) -> dict[str, Any]:
  return {"name": topo.name, "platform": topo.platform,
          "accelerator_type": topo.accelerator_type, "chips": topo.num_chips,
          "shape": list(topo.shape), "device_kind": device.device_kind,
          "chip": dataclasses.asdict(topo.chip)}


def model_json(mc: model_lib.ModelConfig) -> dict[str, Any]:
  keys = ("vocab_size", "max_len", "stage_sizes", "d_model", "num_layers", "num_experts",
          "top_k", "moe_impl", "dtype", "remat")
  return {k: getattr(mc, k) for k in keys}


def meshes(num_devices: int, num_experts: int, batch_size: int,
           axes: Sequence[str] = partitioning.MESH_AXES) -> list[tuple[int, int, int, int]]:
  """(data, fsdp, expert, tensor) with product num_devices, expert | num_experts, the batch
  split over data x fsdp x expert, and only `axes` larger than 1."""
  divisors = [d for d in range(1, num_devices + 1) if num_devices % d == 0]
  found = []
  for data, fsdp, expert in itertools.product(divisors, repeat=3):
    tensor, left = divmod(num_devices, data * fsdp * expert)
    sizes = (data, fsdp, expert, tensor)
    if (not left and num_experts % expert == 0 and batch_size % (data * fsdp * expert) == 0
        and all(n == 1 or a in axes for a, n in zip(partitioning.MESH_AXES, sizes))):
      found.append(sizes)
  return found


def _time_per_image(candidate: dict[str, Any]) -> float:
  estimate = candidate["estimate"] or {}
  if estimate.get("step_s"):
    return estimate["step_s"] / candidate["batch_size"]
  return math.inf


def search(config: ml_collections.ConfigDict, topo: topology_lib.Topology,
           batch_sizes: Sequence[int],
           axes: Sequence[str] = partitioning.MESH_AXES) -> dict[str, Any]:
  """Compiles the train step for every mesh and batch size; ranks those that fit.

  Ranked by estimated time per image (the step time, at one batch size); when
  the chip has no speed figures, by the bytes a device needs.

  Raises:
    UserError: an axis name is unknown, or no mesh splits the batch sizes.
  """
  unknown = sorted(set(axes) - set(partitioning.MESH_AXES))
  if unknown:
    raise errors.UserError(f"unknown --search_axes {', '.join(unknown)}; expected some of "
                           f"{', '.join(partitioning.MESH_AXES)}")
  start = time.perf_counter()
  mc = model_config(config)
  devices = topology_lib.devices(topo)
  flops_per_image = summary.model_flops_per_image(mc, batch_spec.BatchSpec.from_config(config))
  candidates, unmappable = [], 0
  for batch_size in batch_sizes:
    for sizes in meshes(len(devices), mc.num_experts, batch_size, axes):
      trial = config.copy_and_resolve_references()
      trial.train.batch_size = batch_size
      for axis, size in zip(partitioning.MESH_AXES, sizes):
        trial.mesh[axis] = size
      try:
        mesh = _mesh(trial, devices)
      except errors.ConfigError:  # no layout on the physical torus: not a candidate
        unmappable += 1
        continue
      candidates.append(train_json(trial, mc, topo, mesh,
                                   plan_train(trial, mc, mesh, topo.chip), flops_per_image))
  if not candidates:
    raise errors.UserError(f"no mesh over {len(devices)} chips (axes {', '.join(axes)}) splits "
                           f"the batch sizes {', '.join(map(str, batch_sizes))}")
  fitting = [c for c in candidates if c["fits"]]
  fitting.sort(key=lambda c: (_time_per_image(c), c["need_bytes"]))
  return {"topology": topology_json(topo, devices[0]), "model": model_json(mc),
          "compiled": len(candidates), "unmappable": unmappable, "fit": len(fitting),
          "ranked": fitting,
          "estimate_note": "ranked by estimated time per image; " + hlo_cost.NOTE,
          "search_s": round(time.perf_counter() - start, 3)}


def launch_overrides(base_args: Sequence[str], candidate: dict[str, Any]) -> str:
  """The `python -m micar_jax.main` command line that trains with a candidate's mesh and batch."""
  mesh = candidate["mesh"]
  sized = [f"--config.mesh.{axis}={mesh[axis]}" for axis in partitioning.MESH_AXES]
  return " ".join(["python -m micar_jax.main", *base_args, *sized,
                   f"--config.train.batch_size={candidate['batch_size']}", "--workdir=DIR"])


def shortfall(result: dict[str, Any]) -> str | None:
  """One line naming why the train step does not fit (None when it fits or nobody knows)."""
  train, topo = result["train"], result["topology"]
  if train["fits"] is not False:
    return None
  chip = topo["chip"]
  where = f"{topo['name']} ({chip['name']}, {chip['hbm_bytes'] / 2**30:.1f} GiB per chip)"
  if train["error"]:
    return f"the train step does not fit on {where}: {train['error']}"
  short = (train["need_bytes"] - chip["hbm_bytes"]) / 2**30
  return (f"the train step needs {train['need_bytes'] / 2**30:.2f} GiB per chip on {where}, "
          f"{short:.2f} GiB short; try micar_jax.plan --search, remat or a larger topology")


def _base_args(argv: Sequence[str]) -> list[str]:
  """The --config file and overrides of argv, less the mesh and batch that search chooses."""
  chosen = ("--config.mesh.", "--config.train.batch_size")
  return [a for a in argv[1:] if (a.startswith("--config=") or a.startswith("--config."))
          and not a.startswith(chosen)]


def _prepare_jax(topo: topology_lib.Topology) -> None:
  """CPU backend only (TPU and GPU devices come from the topology), with enough CPU devices;
  for a TPU topology, the stack libtpu's compiler needs (stack_limit: a restart); for a
  GPU topology, no persistent compilation cache."""
  if topo.is_tpu:
    stack_limit.restart_unlimited()
  if topo.platform == "gpu":
    # Compile-only GPU devices write the persistent cache but cannot read it back (XLA:
    # "PjRtCompiler must be constructed with a Client"): each rerun would only warn.
    jax.config.update("jax_enable_compilation_cache", False)
  jax.config.update("jax_platforms", "cpu")
  if topo.platform == "cpu" and "xla_force_host_platform_device_count" not in os.environ.get(
      "XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", topo.num_chips)


def main(argv: Sequence[str]) -> None:
  cli.expect_no_arguments(argv)
  topo = topology_lib.parse(FLAGS.topology)
  _prepare_jax(topo)
  if FLAGS.search:
    sizes = [int(b) for b in FLAGS.batch_sizes] or [FLAGS.config.train.batch_size]
    result = search(FLAGS.config, topo, sizes, FLAGS.search_axes)
    commands = [launch_overrides(_base_args(sys.argv), c) for c in result["ranked"][:TOP]]
    for c, command in zip(result["ranked"], commands):
      c["command"] = command
    print(plan_report.format_search(result, commands))
  else:
    result = plan(FLAGS.config, topo, FLAGS.decode)
    print(plan_report.format_plan(result))
  print(json.dumps(result))
  problem = None if FLAGS.search else shortfall(result)
  if FLAGS.require_fit and problem:
    cli.fail(problem)


def program() -> None:
  """Runs the program (`python -m micar_jax.plan`)."""
  cli.run(main, define_flags)
