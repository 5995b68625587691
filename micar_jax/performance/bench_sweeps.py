"""Train-step sweeps of the benchmark: MoE dispatch x expert count, and the largest batch.

MoE variants (each timed at every expert count of `--moe_experts`):
  sort             sort + `jax.lax.ragged_dot`, XLA's default lowering (dropless);
  sort_pallas      the same with jax's Pallas/Triton grouped matmul
                   (`jax_ragged_dot_use_gpu_pallas_triton_lowering`, which is what
                   JAX_RAGGED_DOT_USE_GPU_PALLAS_TRITON_LOWERING=true sets; GPU only);
  einsum           capacity buffers, `--moe_capacity_factor` (tokens over capacity
                   are dropped: `dropped_fraction`);
  expert_parallel  shard_map + all-to-all over the mesh's "expert" axis (as many
                   devices as divide the expert count), same capacity factor.

A variant that fails (a lowering that the backend lacks, out of memory) is
recorded with its one-line error and the sweep goes on.
"""

import math
from collections.abc import Sequence
from typing import Any, Callable

import jax
import ml_collections

from micar_jax.core import sharding
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.models import moe, partitioning
from micar_jax.performance import device_memory, timing

# Every dispatch the model registers, plus sort with the GPU Pallas grouped matmul.
MOE_VARIANTS = (*moe.DISPATCH, "sort_pallas")
PALLAS_FLAG = "jax_ragged_dot_use_gpu_pallas_triton_lowering"
# Retries below the predicted largest batch, each 10 % smaller, when it does not fit.
BATCH_RETRIES = 3


def variant_config(config: ml_collections.ConfigDict, variant: str, num_experts: int,
                   capacity_factor: float) -> ml_collections.ConfigDict:
  """config with one MoE dispatch and expert count (mesh.expert set for expert_parallel)."""
  c = config.copy_and_resolve_references()
  c.model.num_experts = num_experts
  c.model.moe_impl = "sort" if variant == "sort_pallas" else variant
  if variant in ("einsum", "expert_parallel"):
    c.model.capacity_factor = capacity_factor
  if variant == "expert_parallel":
    devices = c.mesh.num_devices or jax.device_count()
    c.mesh.expert = math.gcd(devices, num_experts)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
  return c


def skip_reason(variant: str) -> str | None:
  """Why a variant cannot run here (None if it can)."""
  if variant == "sort_pallas":
    if jax.default_backend() != "gpu":
      return f"GPU only (backend: {jax.default_backend()})"
    if not hasattr(jax.config, PALLAS_FLAG):
      return f"this jax ({jax.__version__}) has no {PALLAS_FLAG}"
  return None


def time_variant(config: ml_collections.ConfigDict, steps: tuple[int, int]) -> dict[str, Any]:
  """Train-step figures of one variant config (a fresh mesh, state and compile).

  steps: (timed steps, warm-up steps).
  """
  mc = model_lib.ModelConfig.from_config(config, config.model.vocab_size)
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.num_devices else None
  mesh = sharding.make_mesh(config, devices)
  figures, _ = timing.time_train(config, mc, mesh, partitioning.logical_rules(),
                                 batch_spec.BatchSpec.from_config(config), *steps)
  return figures


def moe_sweep(config: ml_collections.ConfigDict, variants: Sequence[str],
              experts: Sequence[int], capacity_factor: float, steps: tuple[int, int],
              out: dict[str, Any], publish: Callable[[], None]) -> None:
  """Fills out[variant] = {"E=<n>": figures or {"error"}, "step_ratio": last / first E}.

  steps: (timed steps, warm-up steps) per variant.

  Calls publish() after every timed variant, so a run stopped part-way keeps
  what it measured.
  """
  for variant in variants:
    reason = skip_reason(variant)
    if reason:
      out[variant] = {"skipped": reason}
      publish()
      continue
    out[variant] = {}
    for count in experts:
      c = variant_config(config, variant, count, capacity_factor)
      before = getattr(jax.config, PALLAS_FLAG, None)
      try:
        if variant == "sort_pallas":
          jax.config.update(PALLAS_FLAG, True)
        out[variant][f"E={count}"] = time_variant(c, steps)
      except (ValueError, NotImplementedError, jax.errors.JaxRuntimeError) as e:
        out[variant][f"E={count}"] = {"error": str(e).splitlines()[0][:300]}
      finally:
        if variant == "sort_pallas":
          jax.config.update(PALLAS_FLAG, before)
      publish()
    first, last = (out[variant].get(f"E={e}", {}) for e in (experts[0], experts[-1]))
    if "step_ms" in first and "step_ms" in last and len(experts) > 1:
      out[variant]["step_ratio"] = last["step_ms"] / first["step_ms"]
      publish()


def largest_batch(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig, mesh, rules,
                  steps: tuple[int, int]) -> dict[str, Any]:
  """The largest training batch that runs, predicted from XLA's estimates, then tried.

  XLA's memory estimate at the configured batch b and at 2b gives a line
  (fixed + per image); the batch where it meets the runtime's memory limit
  (rounded down to a multiple of 8 x batch shards) is timed (steps: timed, warm-up),
  and, when it does not fit, up to BATCH_RETRIES batches each 10 % smaller.
  """
  device = mesh.devices.flat[0]
  limit = device_memory.memory_limit(device)
  if limit is None:
    return {"largest_batch": None, "note": device_memory.UNAVAILABLE.format(device.platform)}
  multiple = 8 * sharding.batch_shards(mesh)
  spec = batch_spec.BatchSpec.from_config(config)
  sizes = (spec.batch_size, 2 * spec.batch_size)
  estimates = tuple(timing.estimate_memory(config, mc, mesh, rules, spec.with_batch_size(b))
                    for b in sizes)
  out = {"limit_bytes": limit, "estimates": {str(b): m for b, m in zip(sizes, estimates)},
         "tried": [], "largest_batch": None}
  if None in estimates:
    out["note"] = "XLA gives no memory estimate on this backend"
    return out
  batch = device_memory.predict_largest_batch(sizes, estimates, limit, multiple)
  out["predicted"] = batch
  for _ in range(BATCH_RETRIES + 1):
    if batch < multiple:
      break
    try:
      figures, _ = timing.time_train(config, mc, mesh, rules, spec.with_batch_size(batch),
                                     *steps)
    except jax.errors.JaxRuntimeError as e:
      if not device_memory.is_out_of_memory(e):
        raise
      out["tried"].append({"batch_size": batch, "fits": False})
      batch = int(batch * 0.9) // multiple * multiple
      continue
    figures["peak_memory_bytes"] = device_memory.peak_memory(mesh.devices.flat)
    out["tried"].append({"fits": True, **figures})
    out["largest_batch"] = batch
    break
  return out
