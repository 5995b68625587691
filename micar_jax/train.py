"""The training protocol of the reference, resumable: train → validate → early stop → test.

Per epoch (docs/reference_model.md §5): train, then the teacher-forced validation
loss and greedy-equivalent decoding of the whole validation set, scored with
config.train.select_key of config.train.select_suite (by default the selection
score (B1+B2+B3+B4)/8 + METEOR/4 + ROUGE-L/4); a score >= the best
(ties go to the later epoch) becomes the best checkpoint; training stops after
max_patience epochs without one. The best checkpoint is then tested.

Resumption is exact: the latest checkpoint holds the train state, the grain
iterator and the loop state, dropout keys derive from (seed, step), so a run
killed at any point and restarted ends with the same parameters (bitwise on CPU).
"""

import dataclasses
import signal
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from micar_jax import checkpointing, errors, evaluate, optim, run_logging, sharding, steps
from micar_jax import run as run_lib
from micar_jax.data import input_pipeline, sources
from micar_jax.metrics import scores as scores_lib


@dataclasses.dataclass
class LoopState:
  """The loop's own resumable state (saved as JSON in each latest checkpoint)."""

  epoch: int = 0
  best_score: float = -1.0
  best_epoch: int = -1
  bad_epochs: int = 0
  finished: bool = False


def _install_sigterm() -> dict[str, bool]:
  flag = {"stop": False}

  def handler(signum, frame):  # pylint: disable=unused-argument
    flag["stop"] = True

  signal.signal(signal.SIGTERM, handler)
  return flag


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains with per-epoch validation and early stopping, then tests the best model.

  Returns:
    The test scores (also written to workdir/test/scores.json).

  Raises:
    ValueError: config.train.select_suite/select_key name no metric (one line).
  """
  scores_lib.check_selection(config.train.select_suite, config.train.select_key)
  run = run_lib.Run(config, workdir)
  config = run.config
  shards = sharding.batch_shards(run.mesh)
  if config.train.batch_size % shards:
    raise errors.UserError(
        f"train.batch_size={config.train.batch_size} does not split over the mesh's {shards} "
        "batch shards (mesh data x fsdp x expert); use a multiple of it")
  tx_steps = input_pipeline.steps_per_epoch(config, len(sources.open_split(config, "train")))
  tx = optim.make_optimizer(config, tx_steps)
  init_fn = steps.make_init_fn(run.model_config, tx, config.data.image_size)
  with sharding.use_mesh(run.mesh, run.rules):
    state, state_shardings = sharding.init_sharded(
        init_fn, run.mesh, run.rules, jax.random.PRNGKey(config.seed))
  state = _maybe_load_init(config, state)
  train_step = jax.jit(steps.make_train_step(run.model_config, tx, config),
                       in_shardings=(state_shardings, run.batch_sharding),
                       out_shardings=(state_shardings, None), donate_argnums=(0,))
  eval_step = jax.jit(steps.make_eval_step(run.model_config, config))
  generate_fn = run.generate_fn()

  data_iter = input_pipeline.make_train_iterator(config, run.tokenizer)
  loop = LoopState()
  restored = run.checkpoints.restore_latest(checkpointing.abstract_like(state), data_iter)
  if restored is not None:
    state, meta = restored
    loop = LoopState(**meta)
    logging.info("resumed from step %d (epoch %d)", int(state.step), loop.epoch)
  log = run_logging.RunLog(workdir, config)
  stop = _install_sigterm()
  max_steps = config.train.max_steps
  step = int(state.step)
  try:
    while not loop.finished:
      epoch_end = (loop.epoch + 1) * tx_steps
      progress = log.progress(total=epoch_end - loop.epoch * tx_steps, initial=step - loop.epoch * tx_steps,
                              desc=f"epoch {loop.epoch + 1}/{config.train.epochs}")
      start = time.time()
      with sharding.use_mesh(run.mesh, run.rules):
        while step < epoch_end and not (max_steps and step >= max_steps):
          batch = run.put(next(data_iter), pad=False)
          state, metrics = train_step(state, batch)
          step += 1
          progress.update(1)
          if step % config.train.log_every == 0 or step == epoch_end:
            log.train(step, loop.epoch, metrics, optim.learning_rates(config, tx_steps, step - 1),
                      config.train.batch_size * config.train.log_every / (time.time() - start))
            start = time.time()
          if stop["stop"]:
            _save_latest(run, state, data_iter, loop)
            raise KeyboardInterrupt("SIGTERM")
          if step % config.train.checkpoint_every == 0 and step < epoch_end:
            _save_latest(run, state, data_iter, loop)
      progress.close()
      smoke_end = bool(max_steps) and step >= max_steps
      _end_of_epoch(run, state, loop, eval_step, generate_fn, log, smoke_end)
      _save_latest(run, state, data_iter, loop)
  except KeyboardInterrupt as e:
    logging.warning("interrupted (%s) at step %d; the latest checkpoint is saved: rerun the "
                    "same command to resume", e, step)
    raise
  finally:
    if hasattr(data_iter, "close"):
      data_iter.close()
    log.close()
  return run_lib.test_best(run, generate_fn)


def _maybe_load_init(config, state):
  """Starts from a converted checkpoint (config.init_from) or ImageNet ResNet weights."""
  if not (config.init_from or config.model.vision_init_from):
    return state
  from micar_jax import convert  # pylint: disable=g-import-not-at-top
  if config.init_from:
    variables = convert.load_model_init(
        config.init_from, checkpointing.abstract_like(state.variables()))
  else:
    variables = convert.load_vision_init(config.model.vision_init_from, state.variables())
  return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _save_latest(run: run_lib.Run, state, data_iter, loop: LoopState) -> None:
  run.checkpoints.save_latest(int(state.step), state, data_iter, dataclasses.asdict(loop))


def _end_of_epoch(run: run_lib.Run, state, loop: LoopState, eval_step, generate_fn, log,
                  smoke_end: bool) -> None:
  """Validation, selection, early stopping; updates `loop` in place."""
  config = run.config
  variables = state.variables()
  batches, _ = input_pipeline.make_eval_batches(config, run.tokenizer, "val")
  with sharding.use_mesh(run.mesh, run.rules):
    val_loss = evaluate.validation_loss(eval_step, variables, batches, run.put)
  _, scores = run.evaluate_split(variables, "val", generate_fn, (config.train.select_suite,))
  score = scores.values.get(config.train.select_key, 0.0)
  improved = score >= loop.best_score
  if improved:
    loop.best_score, loop.best_epoch, loop.bad_epochs = score, loop.epoch, 0
    run.checkpoints.save_best(int(state.step), variables,
                              {"epoch": loop.epoch, "score": score})
  else:
    loop.bad_epochs += 1
  log.validation(int(state.step), loop.epoch, val_loss, scores, improved)
  loop.epoch += 1
  loop.finished = (smoke_end or loop.epoch >= config.train.epochs
                   or loop.bad_epochs >= config.train.max_patience)
