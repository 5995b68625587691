"""Training and decoding throughput, model FLOP utilisation and memory on random inputs.

  python -m micar_jax.bench --config=configs/mmr.py [--steps=10] [--warmup=2] \
      [--decode=greedy,beam] [--decode_batch=32] [--data_dir=DIR] [--peak_tflops=989] \
      [--notrain] [--moe_variants=sort,sort_pallas,einsum,expert_parallel] \
      [--moe_experts=8,64] [--max_batch] [--profile_dir=DIR] \
      [--compilation_cache=DIR] [--out=FILE] [--config.model.dtype=bfloat16 ...]

Prints one JSON object (and writes it to --out after every section, so that a
run stopped part-way keeps what it measured):
  device          platform, kind, count (devices in the mesh); jax version, date;
  config          the benchmarked shapes and switches;
  train           images/s, step ms (warm-up excluded), compile s (and whether
                  the persistent compilation cache served it), model FLOPs
                  per image (3 x forward, active experts only), TFLOP/s, MFU
                  against the device kind's bf16 dense peak (null where unknown,
                  e.g. CPU), peak device memory (null, with the reason, where the
                  runtime has no memory statistics, e.g. CPU), XLA's static
                  memory estimate, the last loss and MoE dropped fraction, and
                  with --profile_dir the top ops of a traced step;
  decode          per method (greedy, beam, greedy_uncached): reports/s at
                  --decode_batch, compile s, and the decoding steps run;
  moe             with --moe_variants: train step per dispatch x expert count
                  (micar_jax.performance.bench_sweeps);
  max_batch       with --max_batch: the largest training batch that fits;
  input_pipeline  examples/s per grain worker count (micar_jax.performance.input_bench),
                  only with --data_dir.

No dataset is needed: images are standard-normal (already normalised) and
reports random token ids. The vocabulary size is config.model.vocab_size, the
tokenizer's with --data_dir, else defaults.DEFAULT_VOCAB. grain, sentencepiece and
TFDS are imported only for --data_dir, so the benchmark runs where only jax,
flax, optax, orbax-checkpoint and ml_collections are installed.
"""

import dataclasses
import datetime
import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import flags

from micar_jax import cli, decode, errors
from micar_jax.config import defaults
from micar_jax.core import sharding, summary
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning
from micar_jax.performance import bench_sweeps, chips, device_memory, profiling, timing

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declared only when run as a program, so importing this module defines no flags."""
  cli.define_config_flag()
  flags.DEFINE_integer("steps", 10, "Timed train steps (after the warm-up).")
  flags.DEFINE_integer("warmup", 2, "Untimed train steps after compilation.")
  flags.DEFINE_bool("train", True, "Time the configured train step (--notrain: only the "
                    "sweeps; decoding needs it).")
  flags.DEFINE_list("decode", ["greedy", "beam"],
                    f"Decoding methods to time ({', '.join(decode.METHODS)}); empty to skip. "
                    "Beam width: --config.eval.beam_width.")
  flags.DEFINE_integer("decode_batch", 0, "Images per decoding call; 0 = config.eval.batch_size.")
  flags.DEFINE_integer("decode_repeats", 3, "Timed calls per decoding method.")
  flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for MFU; 0 = from the kind.")
  flags.DEFINE_list("moe_variants", [], "MoE dispatches to time at each --moe_experts "
                    "(sort, sort_pallas, einsum, expert_parallel); empty to skip.")
  cli.define_int_list("moe_experts", [8, 64], "Expert counts of the MoE sweep.")
  flags.DEFINE_float("moe_capacity_factor", 1.25, "Capacity factor of the einsum variant.")
  flags.DEFINE_bool("max_batch", False, "Find the largest training batch that fits.")
  flags.DEFINE_string("profile_dir", "", "Trace --profile_steps train steps here and report "
                      "the top ops by time.")
  flags.DEFINE_integer("profile_steps", 3, "Train steps in the profiler trace.")
  flags.DEFINE_string("compilation_cache", "", "Persistent XLA compilation cache folder.")
  flags.DEFINE_string("out", "", "Also write the JSON here (after every section).")
  flags.DEFINE_string("data_dir", "", "Prepared data folder: also time the input pipeline there.")
  cli.define_int_list("workers", [0, 2], "Pipeline worker counts (with --data_dir).")
  flags.DEFINE_integer("batches", 30, "Pipeline batches timed after the first one.")
  flags.mark_flags_as_required(["config"])


@dataclasses.dataclass(frozen=True)
class Options:
  """What to measure besides the train step (the command-line flags)."""

  steps: int = 10
  warmup: int = 2
  train: bool = True
  decode: tuple[str, ...] = ("greedy", "beam")
  decode_batch: int = 0
  decode_repeats: int = 3
  peak_tflops: float = 0.0
  moe_variants: tuple[str, ...] = ()
  moe_experts: tuple[int, ...] = (8, 64)
  moe_capacity_factor: float = 1.25
  max_batch: bool = False
  profile_dir: str = ""
  profile_steps: int = 3
  compilation_cache: str = ""
  out: str = ""
  data_dir: str = ""
  workers: tuple[int, ...] = (0, 2)
  pipeline_batches: int = 30


def peak_tflops(device_kind: str) -> float | None:
  """The dense bf16 peak of a device kind (jax's `device.device_kind`), None if unknown."""
  chip = chips.by_device_kind(device_kind)
  return chip.peak_tflops if chip else None


def bench_train(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig, mesh, rules,
                opts: Options, peak: float | None) -> tuple[dict[str, Any], state_lib.TrainState]:
  """Times the configured train step; returns its figures and the trained state."""
  spec = batch_spec.BatchSpec.from_config(config)
  figures, run = timing.time_train(config, mc, mesh, rules, spec, opts.steps, opts.warmup)
  flops_per_image = summary.model_flops_per_image(mc, spec)
  tflops = flops_per_image * spec.batch_size / (figures["step_ms"] / 1e3) / 1e12
  total_peak = peak * mesh.size if peak else None
  peak_bytes = device_memory.peak_memory(mesh.devices.flat)
  figures.update({
      "model_gflop_per_image": flops_per_image / 1e9, "model_tflop_per_s": tflops,
      "peak_tflop_per_s": total_peak, "mfu": tflops / total_peak if total_peak else None,
      "peak_memory_bytes": peak_bytes,
      "peak_memory_gib": peak_bytes / 2**30 if peak_bytes is not None else None,
  })
  if peak_bytes is None:
    figures["peak_memory_note"] = device_memory.UNAVAILABLE.format(mesh.devices.flat[0].platform)
  if opts.profile_dir:
    figures["profile"] = profiling.trace_top_ops(
        lambda: timing.time_steps(run, opts.profile_steps), opts.profile_dir)
  return figures, run.state


def bench_decode(config: ml_collections.ConfigDict, mc: model_lib.ModelConfig, mesh, rules,
                 state: state_lib.TrainState, opts: Options) -> dict[str, Any]:
  """Reports/s of each decoding method on random images ({} when none is asked for)."""
  batch_size = opts.decode_batch or config.eval.batch_size
  spec = batch_spec.BatchSpec.from_config(config, batch_size=batch_size)
  images = sharding.global_batch({"images": spec.random(mc.vocab_size, seed=1)["images"]},
                                 mesh)["images"]
  results = {}
  for method in opts.decode:
    eval_cfg = config.eval.copy_and_resolve_references()
    eval_cfg.decode = method
    jitted = decode.make_generate_fn(mc, eval_cfg)
    with partitioning.use_mesh(mesh, rules):
      generate, compile_s, hit = timing.compile_timed(
          lambda: jitted.lower(state.params, state.batch_stats, images))
    ids = jax.block_until_ready(generate(state.params, state.batch_stats, images))
    start = time.perf_counter()
    for _ in range(opts.decode_repeats):
      ids = generate(state.params, state.batch_stats, images)
    ids = np.asarray(jax.block_until_ready(ids))
    call_s = (time.perf_counter() - start) / opts.decode_repeats
    results[method] = {
        "batch_size": batch_size, "reports_per_s": batch_size / call_s,
        "call_ms": 1e3 * call_s, "compile_s": compile_s, "compile_cache_hit": hit,
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
  from micar_jax.performance import input_bench as data_bench  # pylint: disable=import-outside-toplevel
  out = {"data_dir": config.data_dir, "batches": opts.pipeline_batches, "workers": {}}
  for workers in opts.workers:
    config.data.worker_count = workers
    first_s, rate = data_bench.measure(config, tokenizer, opts.pipeline_batches)
    out["workers"][str(workers)] = {"first_batch_s": first_s, "examples_per_s": rate}
  return out


def check_options(opts: Options) -> None:
  """Raises UserError (one line) for options that cannot work, before anything compiles."""
  unknown = sorted(set(opts.decode) - set(decode.METHODS))
  if unknown:
    raise errors.UserError(f"unknown --decode {', '.join(unknown)}; expected "
                           f"{', '.join(decode.METHODS)}")
  unknown = sorted(set(opts.moe_variants) - set(bench_sweeps.MOE_VARIANTS))
  if unknown:
    raise errors.UserError(f"unknown --moe_variants {', '.join(unknown)}; expected "
                           f"{', '.join(bench_sweeps.MOE_VARIANTS)}")
  if opts.steps < 1 or opts.warmup < 0 or opts.decode_repeats < 1 or opts.profile_steps < 1:
    raise errors.UserError("--steps, --decode_repeats and --profile_steps must be >= 1, "
                           "--warmup >= 0")
  if opts.decode and not opts.train:
    raise errors.UserError("--decode needs the trained state: drop --notrain or pass --decode=")


def write_json(result: dict[str, Any], path: str) -> None:
  """Writes result to path atomically (a reader never sees half a file)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
  os.replace(tmp, path)


def run(config: ml_collections.ConfigDict, opts: Options) -> dict[str, Any]:
  """Measures everything `opts` asks for; returns the JSON-ready result."""
  check_options(opts)
  if opts.compilation_cache:
    timing.use_compilation_cache(opts.compilation_cache)
  config = config.copy_and_resolve_references()
  tokenizer = None
  if opts.data_dir:
    from micar_jax.data import tokenizer as tokenizer_lib  # pylint: disable=import-outside-toplevel
    config.data_dir = opts.data_dir
    with tempfile.TemporaryDirectory() as workdir:
      tokenizer = tokenizer_lib.load_or_build_tokenizer(config, config.data_dir, workdir)
  vocab = config.model.vocab_size or (tokenizer.vocab_size if tokenizer
                                      else defaults.DEFAULT_VOCAB)
  config.model.vocab_size = vocab
  mc = model_lib.ModelConfig.from_config(config, vocab)
  devices = jax.devices()[:config.mesh.num_devices] if config.mesh.num_devices else None
  mesh = sharding.make_mesh(config, devices)
  rules = partitioning.logical_rules()
  device = mesh.devices.flat[0]
  peak = opts.peak_tflops or peak_tflops(device.device_kind)
  result = {
      "device": {"platform": device.platform, "kind": device.device_kind, "count": mesh.size},
      "jax_version": jax.__version__,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "compilation_cache": opts.compilation_cache or None,
      "config": {"image_size": config.data.image_size, "text_seq_len": mc.max_len,
                 "vocab_size": mc.vocab_size, "stage_sizes": list(mc.stage_sizes),
                 "d_model": mc.d_model, "num_layers": mc.num_layers,
                 "num_experts": mc.num_experts, "top_k": mc.top_k, "moe_impl": mc.moe_impl,
                 "capacity_factor": mc.capacity_factor, "dtype": mc.dtype, "remat": mc.remat},
  }

  def publish() -> None:
    if opts.out:
      write_json(result, opts.out)

  if opts.train:
    result["train"], state = bench_train(config, mc, mesh, rules, opts, peak)
    publish()
    result["decode"] = bench_decode(config, mc, mesh, rules, state, opts)
    del state
    publish()
  if opts.moe_variants:
    result["moe"] = {}
    bench_sweeps.moe_sweep(config, opts.moe_variants, opts.moe_experts, opts.moe_capacity_factor,
                           (opts.steps, opts.warmup), result["moe"], publish)
  if opts.max_batch:
    result["max_batch"] = bench_sweeps.largest_batch(config, mc, mesh, rules,
                                                     (opts.steps, opts.warmup))
    publish()
  if tokenizer:
    result["input_pipeline"] = bench_pipeline(config, tokenizer, opts)
    publish()
  return result


def options_from_flags() -> Options:
  """Options from the parsed command-line flags."""
  return Options(
      steps=FLAGS.steps, warmup=FLAGS.warmup, train=FLAGS.train,
      decode=tuple(m for m in FLAGS.decode if m), decode_batch=FLAGS.decode_batch,
      decode_repeats=FLAGS.decode_repeats, peak_tflops=FLAGS.peak_tflops,
      moe_variants=tuple(v for v in FLAGS.moe_variants if v),
      moe_experts=tuple(int(e) for e in FLAGS.moe_experts),
      moe_capacity_factor=FLAGS.moe_capacity_factor, max_batch=FLAGS.max_batch,
      profile_dir=FLAGS.profile_dir, profile_steps=FLAGS.profile_steps,
      compilation_cache=FLAGS.compilation_cache, out=FLAGS.out, data_dir=FLAGS.data_dir,
      workers=tuple(int(w) for w in FLAGS.workers), pipeline_batches=FLAGS.batches)


def print_json(measure: Callable[[], dict[str, Any]]) -> None:
  """Prints measure()'s result as indented JSON."""
  print(json.dumps(measure(), indent=2))


def main(argv: Sequence[str]) -> None:
  cli.expect_no_arguments(argv)
  print_json(lambda: run(FLAGS.config, options_from_flags()))


def program() -> None:
  """Runs the program (`python -m micar_jax.bench`)."""
  cli.run(main, define_flags)
