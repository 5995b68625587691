"""Training and decoding throughput, model FLOP utilisation and memory on random inputs.

  python -m micar_jax.bench --config=configs/mmr.py [--steps=10] [--warmup=2] \
      [--decode=greedy,beam] [--decode_batch=32] [--data_dir=DIR] [--peak_tflops=989] \
      [--config.model.dtype=bfloat16 ...]

Prints one JSON object:
  device          platform, kind, count (devices in the mesh);
  config          the benchmarked shapes and switches;
  train           images/s, step ms (warm-up excluded), compile s, model FLOPs
                  per image (3 x forward, active experts only), TFLOP/s, MFU
                  against the device kind's bf16 dense peak (null where unknown,
                  e.g. CPU), peak device memory (null where the runtime has no
                  memory statistics, e.g. CPU) and XLA's static memory estimate;
  decode          per method (greedy, beam, greedy_uncached): reports/s at
                  --decode_batch, compile s, and the decoding steps run;
  input_pipeline  examples/s per grain worker count (micar_jax.data.bench),
                  only with --data_dir.

No dataset is needed: images are standard-normal (already normalised) and
reports random token ids. The vocabulary size is config.model.vocab_size, the
tokenizer's with --data_dir, else DEFAULT_VOCAB.
"""

import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from micar_jax import decode, errors, flops, optim, sharding, steps, summary
from micar_jax.data import bench as data_bench
from micar_jax.data import sources
from micar_jax.data import tokenizer as tokenizer_lib
from micar_jax.models import model as model_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declared only when run as a program, so importing this module defines no flags."""
  config_flags.DEFINE_config_file("config", None, "Config file (configs/<dataset>.py).",
                                  lock_config=True)
  flags.DEFINE_integer("steps", 10, "Timed train steps (after the warm-up).")
  flags.DEFINE_integer("warmup", 2, "Untimed train steps after compilation.")
  flags.DEFINE_list("decode", ["greedy", "beam"],
                    f"Decoding methods to time ({', '.join(decode.METHODS)}); empty to skip. "
                    "Beam width: --config.eval.beam_width.")
  flags.DEFINE_integer("decode_batch", 0, "Images per decoding call; 0 = config.eval.batch_size.")
  flags.DEFINE_integer("decode_repeats", 3, "Timed calls per decoding method.")
  flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for MFU; 0 = from the kind.")
  flags.DEFINE_string("data_dir", "", "Prepared data folder: also time the input pipeline there.")
  flags.DEFINE_list("workers", ["0", "2"], "Pipeline worker counts (with --data_dir).")
  flags.DEFINE_integer("batches", 30, "Pipeline batches timed after the first one.")
  flags.mark_flags_as_required(["config"])


# Vocabulary size when neither the config nor a data folder gives one (MMR's order).
DEFAULT_VOCAB = 2046
# Dense bf16 peak TFLOP/s per device; the first substring of the lower-cased
# device kind that matches wins (so specific names precede general ones).
PEAK_TFLOPS = (
    ("h100 pcie", 756.0), ("h100", 989.0), ("h200", 989.0), ("a100", 312.0),
    ("tpu v4", 275.0), ("tpu v5 lite", 197.0), ("tpu v5e", 197.0), ("tpu v5p", 459.0),
    ("tpu v5", 459.0), ("tpu v6 lite", 918.0), ("tpu v6e", 918.0),
)


@dataclasses.dataclass(frozen=True)
class Options:
  """What to measure besides the train step (the command-line flags)."""

  steps: int = 10
  warmup: int = 2
  decode: tuple[str, ...] = ("greedy", "beam")
  decode_batch: int = 0
  decode_repeats: int = 3
  peak_tflops: float = 0.0
  data_dir: str = ""
  workers: tuple[int, ...] = (0, 2)
  pipeline_batches: int = 30


def peak_tflops(device_kind: str) -> float | None:
  """The dense bf16 peak of a device kind (jax's `device.device_kind`), None if unknown."""
  kind = device_kind.lower()
  return next((peak for name, peak in PEAK_TFLOPS if name in kind), None)


def random_batch(mc: model_lib.ModelConfig, image_size: int, batch: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """A full-length training batch of random data.

  Returns:
    images float32 [batch, H, W, 3] (or [batch, V, H, W, 3]), input_ids,
    labels and pad_mask int32 [batch, max_len] (no padding, ids >= 4 so that
    no label is `<pad>`).
  """
  rng = np.random.default_rng(seed)
  shape = (batch, image_size, image_size, 3)
  if mc.num_views > 1:
    shape = (batch, mc.num_views) + shape[1:]
  ids = rng.integers(4, mc.vocab_size, (batch, mc.max_len + 1), dtype=np.int32)
  return {"images": rng.standard_normal(shape, np.float32), "input_ids": ids[:, :-1],
          "labels": ids[:, 1:], "pad_mask": np.ones((batch, mc.max_len), np.int32)}


def model_flops_per_image(mc: model_lib.ModelConfig, image_size: int) -> int:
  """Training FLOPs per image: 3 x the forward pass, counting only the routed experts.

  The forward pass is traced with the sort dispatch whatever mc.moe_impl says,
  since capacity buffers would count padding slots (and dropless einsum every
  expert) as model work.
  """
  sorted_mc = dataclasses.replace(mc, moe_impl="sort", remat=False)
  model = model_lib.MicarVLMoE(sorted_mc)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3) if mc.num_views == 1
                                else (1, mc.num_views, image_size, image_size, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, mc.max_len), jnp.int32)
  forward = flops.count_flops(lambda v, x, t: model.apply(v, x, t, None),
                              summary.abstract_variables(sorted_mc), images, ids)
  return 3 * forward


def compile_timed(jitted: Callable, *args: Any) -> tuple[Callable, float]:
  """(compiled executable, seconds spent lowering and compiling it)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def peak_memory(devices: Sequence[jax.Device]) -> int | None:
  """Largest peak_bytes_in_use over devices since start; None without memory statistics."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def compiled_memory(compiled: Any) -> int | None:
  """XLA's per-device estimate: arguments + outputs + temporaries - donated aliases."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, jax.errors.JaxRuntimeError):
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def bench_train(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig, mesh, rules,
                opts: Options, peak: float | None) -> tuple[dict[str, Any], steps.TrainState]:
  """Times the jitted train step; returns its figures and the trained state."""
  tx = optim.make_optimizer(config, 1000)
  init_fn = steps.make_init_fn(mc, tx, config.data.image_size)
  state, state_shardings = sharding.init_sharded(init_fn, mesh, rules,
                                                 jax.random.PRNGKey(config.seed))
  batch_size = config.train.batch_size
  batch = sharding.global_batch(random_batch(mc, config.data.image_size, batch_size), mesh)
  jitted = jax.jit(steps.make_train_step(mc, tx, config),
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))
  with sharding.use_mesh(mesh, rules):
    train_step, compile_s = compile_timed(jitted, state, batch)
  for _ in range(opts.warmup):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(opts.steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready((state, metrics))
  step_s = (time.perf_counter() - start) / opts.steps
  if not np.isfinite(float(metrics["loss"])):
    raise ValueError(f"the train loss is {float(metrics['loss'])} after {opts.steps} steps")
  flops_per_image = model_flops_per_image(mc, config.data.image_size)
  tflops = flops_per_image * batch_size / step_s / 1e12
  total_peak = peak * mesh.size if peak else None
  return {
      "batch_size": batch_size, "steps": opts.steps, "warmup": opts.warmup,
      "images_per_s": batch_size / step_s, "step_ms": 1e3 * step_s, "compile_s": compile_s,
      "model_gflop_per_image": flops_per_image / 1e9, "model_tflop_per_s": tflops,
      "peak_tflop_per_s": total_peak, "mfu": tflops / total_peak if total_peak else None,
      "peak_memory_bytes": peak_memory(mesh.devices.flat),
      "compiled_memory_bytes": compiled_memory(train_step),
  }, state


def bench_decode(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig, mesh, rules,
                 state: steps.TrainState, opts: Options) -> dict[str, Any]:
  """Reports/s of each decoding method on random images ({} when none is asked for)."""
  batch_size = opts.decode_batch or config.eval.batch_size
  images = sharding.global_batch(
      {"images": random_batch(mc, config.data.image_size, batch_size, seed=1)["images"]},
      mesh)["images"]
  results = {}
  for method in opts.decode:
    eval_cfg = config.eval.copy_and_resolve_references()
    eval_cfg.decode = method
    jitted = decode.make_generate_fn(mc, eval_cfg)
    with sharding.use_mesh(mesh, rules):
      generate, compile_s = compile_timed(jitted, state.params, state.batch_stats, images)
    ids = jax.block_until_ready(generate(state.params, state.batch_stats, images))
    start = time.perf_counter()
    for _ in range(opts.decode_repeats):
      ids = generate(state.params, state.batch_stats, images)
    ids = np.asarray(jax.block_until_ready(ids))
    call_s = (time.perf_counter() - start) / opts.decode_repeats
    results[method] = {
        "batch_size": batch_size, "reports_per_s": batch_size / call_s,
        "call_ms": 1e3 * call_s, "compile_s": compile_s,
        # Both searches may stop early; steps run = columns after <sos> holding any token.
        "steps_run": int(np.sum(np.any(ids[:, 1:] != 0, axis=0))),
        "max_steps": mc.max_len,
    }
    if method == "beam":
      results[method]["beam_width"] = int(config.eval.beam_width)
  return results


def bench_pipeline(config: ml_collections.ConfigDict, tokenizer, opts: Options
                   ) -> dict[str, Any]:
  """Examples/s of the training input pipeline per grain worker count."""
  out = {"data_dir": config.data_dir, "batches": opts.pipeline_batches, "workers": {}}
  for workers in opts.workers:
    config.data.worker_count = workers
    first_s, rate = data_bench.measure(config, tokenizer, opts.pipeline_batches)
    out["workers"][str(workers)] = {"first_batch_s": first_s, "examples_per_s": rate}
  return out


def run(config: ml_collections.ConfigDict, opts: Options) -> dict[str, Any]:
  """Measures everything `opts` asks for; returns the JSON-ready result."""
  unknown = sorted(set(opts.decode) - set(decode.METHODS))
  if unknown:
    raise ValueError(f"unknown --decode {', '.join(unknown)}; expected {', '.join(decode.METHODS)}")
  if opts.steps < 1 or opts.warmup < 0 or opts.decode_repeats < 1:
    raise ValueError("--steps and --decode_repeats must be >= 1, --warmup >= 0")
  config = config.copy_and_resolve_references()
  tokenizer = None
  if opts.data_dir:
    config.data_dir = opts.data_dir
    with tempfile.TemporaryDirectory() as workdir:
      tokenizer = tokenizer_lib.load_or_build_tokenizer(config, config.data_dir, workdir)
  vocab = config.model.vocab_size or (tokenizer.vocab_size if tokenizer else DEFAULT_VOCAB)
  mc = model_lib.ModelConfig.from_config(config, vocab)
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.num_devices else None
  mesh = sharding.make_mesh(config, devices)
  rules = sharding.logical_rules()
  device = mesh.devices.flat[0]
  peak = opts.peak_tflops or peak_tflops(device.device_kind)
  result = {
      "device": {"platform": device.platform, "kind": device.device_kind, "count": mesh.size},
      "config": {"image_size": config.data.image_size, "text_seq_len": mc.max_len,
                 "vocab_size": mc.vocab_size, "stage_sizes": list(mc.stage_sizes),
                 "d_model": mc.d_model, "num_layers": mc.num_layers,
                 "num_experts": mc.num_experts, "top_k": mc.top_k, "moe_impl": mc.moe_impl,
                 "capacity_factor": mc.capacity_factor, "dtype": mc.dtype, "remat": mc.remat},
  }
  result["train"], state = bench_train(config, mc, mesh, rules, opts, peak)
  result["decode"] = bench_decode(config, mc, mesh, rules, state, opts)
  result["input_pipeline"] = bench_pipeline(config, tokenizer, opts) if tokenizer else None
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    opts = Options(steps=FLAGS.steps, warmup=FLAGS.warmup,
                   decode=tuple(m for m in FLAGS.decode if m), decode_batch=FLAGS.decode_batch,
                   decode_repeats=FLAGS.decode_repeats, peak_tflops=FLAGS.peak_tflops,
                   data_dir=FLAGS.data_dir, workers=tuple(int(w) for w in FLAGS.workers),
                   pipeline_batches=FLAGS.batches)
    result = run(FLAGS.config, opts)
  except (errors.UserError, sources.MissingDataError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)
