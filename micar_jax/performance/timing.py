"""Compiling and timing the jitted train step on random batches (for the benchmark).

The batches are `BatchSpec.random`: full-length rows of random data.

Compile times are lowering + XLA compilation; with a persistent compilation
cache (`use_compilation_cache`) a program compiled before loads from disk
instead, and `compile_timed` says so, since that time is then a load time.
"""

import dataclasses
import pathlib
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from micar_jax.core import sharding
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning
from micar_jax.training import memory_check, optim, steps

CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class TrainRun:
  """A compiled train step with its state and batch, ready to be timed."""

  step: Any
  state: state_lib.TrainState
  batch: dict[str, jax.Array]
  compile_s: float
  cache_hit: bool


def use_compilation_cache(folder: str) -> None:
  """Keeps every compiled program in `folder`, so a shape compiled once loads after."""
  pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def compile_timed(lower: Callable[[], jax.stages.Lowered]) -> tuple[Any, float, bool]:
  """(compiled executable, seconds spent in `lower()` and compiling, served by the cache?)."""
  hits = []
  listener = lambda event, **kwargs: hits.append(event) if event == CACHE_HIT_EVENT else None
  jax.monitoring.register_event_listener(listener)
  try:
    start = time.perf_counter()
    compiled = lower().compile()
    return compiled, time.perf_counter() - start, bool(hits)
  finally:
    jax.monitoring.unregister_event_listener(listener)


def estimate_memory(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig, mesh, rules,
                    spec: batch_spec.BatchSpec) -> int | None:
  """XLA's memory estimate of the train step on `spec`'s batch, compiled on shapes, never run."""
  tx = optim.make_optimizer(config, 1000)
  compiled, _, _ = compile_timed(
      lambda: steps.lower_train_step(mc, tx, config, mesh, rules, spec))
  return memory_check.compiled_bytes(compiled)


def compile_train(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig, mesh, rules,
                  spec: batch_spec.BatchSpec) -> TrainRun:
  """Initialises a sharded state and a random batch (`spec.random`) and compiles the step
  training jits (steps.jit_train_step)."""
  tx = optim.make_optimizer(config, 1000)
  init_fn = state_lib.make_init_fn(mc, tx, spec)
  state, state_shardings = sharding.init_sharded(init_fn, mesh, rules,
                                                 jax.random.PRNGKey(config.seed))
  batch = sharding.global_batch(spec.random(mc.vocab_size), mesh)
  jitted = steps.jit_train_step(mc, tx, config, state_shardings, mesh)
  with partitioning.use_mesh(mesh, rules):
    step, compile_s, hit = compile_timed(lambda: jitted.lower(state, batch))
  return TrainRun(step, state, batch, compile_s, hit)


def time_steps(run: TrainRun, n: int) -> tuple[float, dict[str, Any]]:
  """Runs n steps (n >= 1), updating run.state; (seconds per step, last metrics)."""
  start = time.perf_counter()
  for _ in range(n):
    run.state, metrics = run.step(run.state, run.batch)
  jax.block_until_ready((run.state, metrics))
  return (time.perf_counter() - start) / n, metrics


def time_train(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig, mesh, rules,
               spec: batch_spec.BatchSpec, steps_timed: int,
               warmup: int) -> tuple[dict[str, Any], TrainRun]:
  """Compiles and times the train step on `spec`'s random batch: (its figures, the run)."""
  run = compile_train(config, mc, mesh, rules, spec)
  if warmup:
    time_steps(run, warmup)
  step_s, metrics = time_steps(run, steps_timed)
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise ValueError(f"the train loss is {loss} after {steps_timed} steps")
  batch_size = spec.batch_size
  return {
      "batch_size": batch_size, "steps": steps_timed, "warmup": warmup,
      "images_per_s": batch_size / step_s, "step_ms": 1e3 * step_s,
      "compile_s": run.compile_s, "compile_cache_hit": run.cache_hit, "loss": loss,
      "dropped_fraction": float(np.mean(metrics["dropped_fraction"])),
      "compiled_memory_bytes": memory_check.compiled_bytes(run.step),
  }, run
