"""Command line: `python -m micar_jax.main --config=configs/<dataset>.py [--workdir=DIR]`.

DIR defaults to runs/<config.dataset>; its absolute path is printed first.

Modes:
  train    train with per-epoch validation and early stopping, then test the best
           checkpoint (resumes from DIR when it holds a run);
  test     test the best checkpoint (or --config.init_from) on the test split;
  predict  write DIR/predictions-<UTC time>.jsonl for --images (files or a directory);
  explain  write DIR/explain/<image>.png (+ .json): per generated word the decoder's
           cross-attention over the image and the experts it was routed to;
  summary  print the parameter table and total_params=<N> (no allocation);
  serve    a local web app over DIR on http://--host:--port/ (test results, per-word
           attention and experts, reports for uploaded images; needs the serve extra).

DIR/config.json records the complete config of the last training started there.
Compiled programs are kept in ~/.cache/micar_jax/jax_cache ($XDG_CACHE_HOME;
MICAR_JAX_COMPILATION_CACHE=DIR moves it, =off disables it), so a rerun starts sooner.

Overrides: any config field, e.g. `--config.train.max_steps=20`. Problems the
user can fix are reported as one `error: ...` line (exit code 2), a diverged run
too. SIGINT/SIGTERM end with one line and exit code 130/143. One process at a
time works in DIR (train/test/predict/explain hold DIR/.lock.<process index>); serve
only reads DIR and takes no lock, so it can browse a run while it trains.
"""

import contextlib
import os

from absl import flags, logging

from micar_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declared only when run as a program, so importing this module defines no flags."""
  cli.define_config_flag()
  flags.DEFINE_string("workdir", None,
                      "Run folder (checkpoints, metrics, reports); default runs/<config.dataset>.")
  flags.DEFINE_enum("mode", "train", ["train", "test", "predict", "explain", "summary", "serve"],
                    "What to do.")
  flags.DEFINE_list("images", None, "Image files or one directory (predict, explain); for "
                    "multi-view configs, study folders or a CSV/JSONL list of studies.")
  flags.DEFINE_string("host", "127.0.0.1", "Address --mode=serve listens on.")
  flags.DEFINE_integer("port", 8080, "Port --mode=serve listens on (0 picks a free one).")


def _prepare_workdir(workdir: str) -> str:
  """Creates `workdir` if needed and checks that it is writable."""
  from micar_jax import errors  # pylint: disable=g-import-not-at-top
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_probe")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise errors.UserError(f"workdir {workdir} is not writable ({e.strerror})") from None
  return workdir


def maybe_initialize_distributed() -> None:
  """Starts jax.distributed on multi-host launches (TPU pods, SLURM, explicit coordinator)."""
  import jax  # pylint: disable=g-import-not-at-top
  multi_host = (os.environ.get("JAX_COORDINATOR_ADDRESS")
                or int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", "1"))) > 1
                or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))
  if multi_host and not jax.distributed.is_initialized():
    jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def run(config, workdir: str | None, mode: str, images: list[str] | None,
        host: str = "127.0.0.1", port: int = 8080) -> None:
  """Dispatches one mode (the body of main, callable from Python)."""
  from micar_jax.config import validation as config_validation  # pylint: disable=g-import-not-at-top
  from micar_jax.core import summary  # pylint: disable=g-import-not-at-top
  config_validation.validate(config)
  if mode == "summary":
    from micar_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top
    vocab = summary.saved_vocab_size(config, workdir or os.path.join("runs", config.dataset))
    mc = model_lib.ModelConfig.from_config(config, vocab)
    if vocab:
      print(f"vocab_size={vocab} (the run folder's tokenizer)")
    print(summary.format_summary(summary.abstract_variables(mc)["params"]))
    return
  workdir = workdir or os.path.join("runs", config.dataset)
  # serve only reads DIR (and takes no lock), so it can browse a run while it trains.
  read_only = mode == "serve"
  workdir = workdir if read_only else _prepare_workdir(workdir)
  print(f"run folder: {os.path.abspath(workdir)}", flush=True)
  from micar_jax.data import registry  # pylint: disable=g-import-not-at-top
  if registry.DATASETS[config.dataset].generated and not config.data_dir:
    from micar_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    config.data_dir = synthetic.data_dir_in(workdir)
    print(f"synthetic data: {config.data_dir}", flush=True)
    if not read_only and not os.path.exists(os.path.join(config.data_dir, "train.jsonl")):
      from micar_jax.core import status  # pylint: disable=g-import-not-at-top
      with status.phase("generating the synthetic dataset"):
        synthetic.ensure_synthetic(config)
  maybe_initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top

  from micar_jax.training import workdir_lock  # pylint: disable=g-import-not-at-top
  with contextlib.nullcontext() if read_only else workdir_lock.hold(workdir, mode,
                                                                     jax.process_index()):
    _dispatch(config, workdir, mode, images, host, port)


def _dispatch(config, workdir: str, mode: str, images: list[str] | None, host: str,
              port: int) -> None:
  """Runs one mode on a prepared, locked workdir."""
  from micar_jax import errors  # pylint: disable=g-import-not-at-top
  from micar_jax.config import validation as config_validation  # pylint: disable=g-import-not-at-top
  from micar_jax.core import run as run_lib  # pylint: disable=g-import-not-at-top
  from micar_jax.inference import predict  # pylint: disable=g-import-not-at-top
  from micar_jax.training import train  # pylint: disable=g-import-not-at-top
  if mode == "train":
    config_validation.check_train_split(config)
    train.train_and_evaluate(config, workdir)
  elif mode == "test":
    run_lib.test_best(run_lib.Run(config, workdir))
  elif mode in ("predict", "explain"):
    if not images:
      raise errors.UserError(f"--mode={mode} needs --images=FILE[,FILE...] or a directory")
    if mode == "predict":
      predict.predict(config, workdir, images)
    else:
      # matplotlib loads only for this mode.
      from micar_jax.inference import explain  # pylint: disable=g-import-not-at-top
      explain.explain(config, workdir, images)
  elif mode == "serve":
    # The web stack loads only for this mode.
    from micar_jax.serve import server  # pylint: disable=g-import-not-at-top
    server.serve(config, workdir, host, port)


def main(argv) -> None:
  cli.expect_no_arguments(argv)
  from micar_jax import errors  # pylint: disable=g-import-not-at-top
  from micar_jax.core import status  # pylint: disable=g-import-not-at-top
  from micar_jax.training import stopping  # pylint: disable=g-import-not-at-top
  status.plain_console_logging()
  status.quiet_backend_probing()
  stopping.raise_on_signals()
  errors.quiet_full_disk_in_threads()
  run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.images, FLAGS.host, FLAGS.port)


if __name__ == "__main__":
  cli.run(main, define_flags)
