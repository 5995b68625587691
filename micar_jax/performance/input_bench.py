"""Throughput of the training input pipeline (read, decode, resize, tokenize, batch).

  python -m micar_jax.performance.input_bench --config=configs/synthetic.py \
      [--config.data_dir=...] [--workers=0,2] [--batches=30]

Prints, per worker count, the time to the first batch and examples/s over the
following batches.
"""

import tempfile
import time
from collections.abc import Sequence

from absl import flags

from micar_jax import cli
from micar_jax.data import input_pipeline, registry, synthetic
from micar_jax.data import tokenizer as tokenizer_lib

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declared only when run as a program, so importing this module defines no flags."""
  cli.define_config_flag(help_text="Run config file.", lock_config=False)
  cli.define_int_list("workers", [0, 2], "Worker process counts to measure.")
  flags.DEFINE_integer("batches", 30, "Batches timed after the first one.")


def measure(config, tokenizer: tokenizer_lib.Tokenizer, batches: int) -> tuple[float, float]:
  """Returns (seconds to the first batch, examples/s over `batches` more)."""
  start = time.perf_counter()
  it = input_pipeline.make_train_iterator(config, tokenizer)
  try:
    next(it)
    first = time.perf_counter() - start
    start = time.perf_counter()
    examples = sum(len(next(it)["index"]) for _ in range(batches))
    return first, examples / (time.perf_counter() - start)
  finally:
    close = getattr(it, "close", None)
    if close is not None:
      close()


def main(argv: Sequence[str]) -> None:
  cli.expect_no_arguments(argv)
  config = FLAGS.config
  with tempfile.TemporaryDirectory() as workdir:
    if registry.DATASETS[config.dataset].generated and not config.data_dir:
      config.data_dir = synthetic.data_dir_in(workdir)
    tokenizer = tokenizer_lib.load_or_build_tokenizer(config, config.data_dir, workdir)
    _report(config, tokenizer)


def _report(config, tokenizer: tokenizer_lib.Tokenizer) -> None:
  """Prints the dataset line, then the timings for each --workers count."""
  print(f"dataset {config.dataset} at {config.data_dir}: image {config.data.image_size}px "
        f"(resize {config.data.resize_size}), batch {config.train.batch_size}, "
        f"augment {config.data.augment}")
  for workers in (int(w) for w in FLAGS.workers):
    config.data.worker_count = workers
    first, rate = measure(config, tokenizer, FLAGS.batches)
    print(f"workers={workers}: first batch {first:.2f} s, {rate:.1f} examples/s")


if __name__ == "__main__":
  cli.run(main, define_flags)
