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

Faults: a step whose loss, gradient or update is not finite is not applied
(steps.make_train_step); the loop reads those flags with the metrics it logs and
before every save, skips up to train.skip_nonfinite_steps such steps and then
stops with `stopping.Diverged`, saving nothing, so the latest checkpoint is the
last good state and no diverged model is validated, kept as best or tested.
SIGINT/SIGTERM stop between two steps or two validation batches, after saving.
A run that stopped at train.max_steps continues when rerun with a higher limit
(or none), exactly as if it had not stopped: a stop inside an epoch validates
nothing and saves no best (its own test then uses the best so far, or the
current weights before the first validation, and says so).

Start-up: each phase (compiling the train step, initialising the model,
building the input pipeline, restoring) prints one status line with its time.
The train step is compiled from shapes before any state exists, and its
compiled memory is checked against the free memory (memory_check.py).
images/s counts train steps only (not compilation, validation or the steps of
another logging interval).
"""

import dataclasses
import math
import time
from typing import Any

import jax
import ml_collections
import optax
from absl import logging

from micar_jax import errors, evaluate
from micar_jax.config import defaults
from micar_jax.core import checkpointing, sharding, status, weights
from micar_jax.core import run as run_lib
from micar_jax.core import state as state_lib
from micar_jax.data import input_pipeline, sources
from micar_jax.metrics import scores as scores_lib
from micar_jax.models import partitioning
from micar_jax.training import memory_check, optim, run_logging, steps, stopping


@dataclasses.dataclass
class LoopState:
  """The loop's own resumable state (saved as JSON in each latest checkpoint)."""

  epoch: int = 0
  best_score: float = -1.0
  best_epoch: int = -1
  bad_epochs: int = 0
  finished: bool = False
  # Why the run finished: "epochs", "patience" or "max_steps" (a higher limit continues it).
  finished_by: str = ""
  # Non-finite steps skipped so far (their updates were not applied).
  skipped_steps: int = 0


class _FiniteFlags:
  """The finite flags and gradient norms of the steps not yet read back from the device.

  They are read (one transfer) only where the loop syncs anyway: at log steps,
  before a save and at an epoch's end.
  """

  def __init__(self, run: run_lib.Run, loop: LoopState):
    self._run, self._loop, self._pending = run, loop, []
    self._zero_grad_steps = 0

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._pending.append((step, (metrics["finite"], metrics["grad_norm"])))

  def check(self) -> None:
    """Raises stopping.Diverged past the allowed non-finite steps or on a collapse."""
    flags = jax.device_get([flag for _, flag in self._pending])
    pending, self._pending = self._pending, []
    allowed = self._run.config.train.skip_nonfinite_steps
    for (step, _), (finite, grad_norm) in zip(pending, flags):
      self._check_collapse(step, finite and grad_norm == 0)
      if finite:
        continue
      self._loop.skipped_steps += 1
      if self._loop.skipped_steps > allowed:
        raise stopping.Diverged(
            f"training diverged: step {step} has a non-finite loss, gradient or update "
            f"(train.skip_nonfinite_steps={allowed}); {_last_good(self._run)}")
      logging.warning("step %d: non-finite loss, gradient or update; its update is skipped "
                      "(%d of train.skip_nonfinite_steps=%d)", step, self._loop.skipped_steps,
                      allowed)


  def _check_collapse(self, step: int, zero_grad: bool) -> None:
    """A finite step whose gradient is exactly 0 learns nothing; many in a row is a collapse."""
    self._zero_grad_steps = self._zero_grad_steps + 1 if zero_grad else 0
    limit = self._run.config.train.max_zero_grad_steps
    if limit and self._zero_grad_steps >= limit:
      first = step - self._zero_grad_steps + 1
      raise stopping.Diverged(
          f"training collapsed: the gradient norm was exactly 0 for {self._zero_grad_steps} "
          f"steps in a row (steps {first}-{step}, train.max_zero_grad_steps={limit}); the model "
          f"no longer learns and {_collapsed_checkpoints(self._run, first)}: lower train.lr and "
          "start again in a new workdir")


def _collapsed_checkpoints(run: run_lib.Run, first_dead_step: int) -> str:
  """Which saved states a collapse that began at `first_dead_step` reached, in words."""
  saved = sorted(run.checkpoints.latest.all_steps())
  if not saved:
    return "no checkpoint was saved"
  dead = [s for s in saved if s >= first_dead_step]
  if not dead:
    return f"the latest checkpoint (step {saved[-1]}) predates the collapse"
  return (f"the latest checkpoint (step {saved[-1]}) was saved after the collapse began at "
          f"step {first_dead_step} and holds its state")


def _last_good(run: run_lib.Run) -> str:
  """The end of a divergence message: which checkpoint stays the latest, what to do.

  Only a checkpoint that was verified (or saved by this run) is called good; one
  restored without checksums is named as unverified, since damaged weights
  diverge too and a lower learning rate would not help then.
  """
  ckpts = run.checkpoints
  step = ckpts.intact_step
  advice = "lower train.lr (or allow skips: train.skip_nonfinite_steps) and rerun"
  skipped = (f" (skipped as unusable: {'; '.join(ckpts.unusable)})" if ckpts.unusable else "")
  if step is None:
    return f"no checkpoint was saved before it{skipped}: {advice}"
  if ckpts.unverified_step == step:
    return (f"it resumed from the checkpoint of step {step}, which has no checksums (saved "
            "before micar_jax recorded them), so a damaged checkpoint cannot be ruled out: "
            f"compare it with a copy, or {advice}")
  return (f"the checkpoint of step {step} is the last good state{skipped} and stays the "
          f"latest: {advice} to resume from it")


def _resume_or_finish(loop: LoopState, config: ml_collections.ConfigDict, step: int) -> None:
  """Reopens a run that stopped at max_steps when the limit is now higher; says when it is done."""
  if not loop.finished:
    return
  limit = config.train.max_steps
  if (loop.finished_by == "max_steps" and (not limit or limit > step)
      and loop.epoch < config.train.epochs and loop.bad_epochs < config.train.max_patience):
    loop.finished, loop.finished_by = False, ""
    print(f"continuing the run that stopped at step {step} (train.max_steps): training on to "
          + (f"step {limit}" if limit else f"epoch {config.train.epochs}"), flush=True)
    return
  reason = {"max_steps": f"it reached train.max_steps at step {step}; set a higher "
                         "train.max_steps (or 0) to train on",
            "patience": f"early stopping after {loop.bad_epochs} epochs without improvement",
            }.get(loop.finished_by, f"{loop.epoch} epochs trained")
  print(f"the run is finished ({reason}): testing its best checkpoint", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains with per-epoch validation and early stopping, then tests the best model.

  Returns:
    The test scores (also written to workdir/test/scores.json).

  Raises:
    errors.ConfigError: config.train.select_suite/select_key name no metric (one line).
    stopping.Diverged: non-finite steps beyond train.skip_nonfinite_steps.
    errors.Interrupted: SIGINT/SIGTERM (after saving the latest checkpoint).
  """
  scores_lib.check_selection(config.train.select_suite, config.train.select_key)
  run = run_lib.Run(config, workdir)
  config = run.config
  # After Run's check of run_config.json, so a refused config never replaces the record.
  if run.is_lead:
    run_lib.save_config(config, workdir)
  problem = run.batch_spec.divisibility_problem(sharding.batch_shards(run.mesh))
  if problem:
    raise errors.UserError(problem)
  _check_init_paths(config)
  tx_steps = input_pipeline.steps_per_epoch(config, len(sources.open_split(config, "train")))
  tx = optim.make_optimizer(config, tx_steps)
  init_fn = state_lib.make_init_fn(run.model_config, tx, run.batch_spec)
  train_step = _compile_train_step(run, tx)
  with status.phase("initialising the model", run.is_lead), partitioning.use_mesh(run.mesh,
                                                                             run.rules):
    state, _ = sharding.init_sharded(init_fn, run.mesh, run.rules,
                                     jax.random.PRNGKey(config.seed))
    state = _maybe_load_init(config, state)
  eval_step = jax.jit(steps.make_eval_step(run.model_config, config))
  generate_fn = run.generate_fn()

  with status.phase("building the input pipeline", run.is_lead):
    data_iter = input_pipeline.make_train_iterator(config, run.tokenizer)
  loop = LoopState()
  if run.checkpoints.latest.latest_step() is None:
    restored = None
  else:
    with status.phase("restoring the latest checkpoint", run.is_lead):
      restored = run.checkpoints.restore_latest(checkpointing.abstract_like(state), data_iter)
  if restored is not None:
    state, meta = restored
    loop = LoopState(**meta)
    logging.info("resumed from step %d (epoch %d)", int(state.step), loop.epoch)
  step = saved_step = int(state.step)
  _resume_or_finish(loop, config, step)
  log = run_logging.RunLog(workdir, config, restored_step=step)
  flags = _FiniteFlags(run, loop)
  max_steps = config.train.max_steps
  try:
    with stopping.StopSignals() as stop:
      try:
        while not loop.finished:
          epoch_end = (loop.epoch + 1) * tx_steps
          # The bar ends where this epoch's training will: its end or max_steps.
          last = min(epoch_end, max_steps) if max_steps else epoch_end
          progress = log.progress(total=last - loop.epoch * tx_steps,
                                  initial=step - loop.epoch * tx_steps,
                                  desc=f"epoch {loop.epoch + 1}/{config.train.epochs}")
          # images/s covers train steps only: the clock restarts after each log and epoch.
          start, timed_steps = time.perf_counter(), 0
          with partitioning.use_mesh(run.mesh, run.rules):
            while step < epoch_end and not (max_steps and step >= max_steps):
              batch = run.put(next(data_iter), pad=False)
              state, metrics = train_step(state, batch)
              step += 1
              timed_steps += 1
              flags.add(step, metrics)
              progress.update(1)
              if step % config.train.log_every == 0 or step == epoch_end:
                flags.check()
                lrs = optim.learning_rates(config, tx_steps, step - 1)
                speed = config.train.batch_size * timed_steps / (time.perf_counter() - start)
                log.train(step, loop.epoch, metrics, lrs, speed, loop.skipped_steps)
                start, timed_steps = time.perf_counter(), 0
              if stop.signum is not None:
                raise errors.Interrupted(stop.signum, safe=True)
              if step % config.train.checkpoint_every == 0 and step < epoch_end:
                saved_step = _save_latest(run, state, data_iter, loop, flags)
          progress.close()
          flags.check()
          if step < epoch_end:
            # train.max_steps mid-epoch: a partial epoch is neither validated nor a best
            # candidate, so continuing later selects exactly as an uninterrupted run.
            loop.finished, loop.finished_by = True, "max_steps"
          else:
            _end_of_epoch(run, state, loop, eval_step, generate_fn, log, step, stop)
          saved_step = _save_latest(run, state, data_iter, loop, flags)
      except errors.Interrupted as e:
        if not e.safe:
          raise
        if saved_step != step:
          saved_step = _save_latest(run, state, data_iter, loop, flags)
        raise errors.Interrupted(e.signum, f"at step {step}; the latest checkpoint (step "
                                   f"{saved_step}) is saved: rerun the same command to resume")
  finally:
    if hasattr(data_iter, "close"):
      data_iter.close()
    log.close()
  return run_lib.test_best(run, generate_fn, _untested_fallback(run, state, loop, step))


def _untested_fallback(run: run_lib.Run, state, loop: LoopState, step: int) -> Any:
  """The weights to test when a run stopped mid-epoch before any best exists, else None."""
  if loop.finished_by != "max_steps" or run.checkpoints.best.latest_step() is not None:
    return None
  print(f"the run stopped at step {step} (train.max_steps) before its first validation: "
        "testing its current weights, which are not a selected best", flush=True)
  return state.variables()


def _compile_train_step(run: run_lib.Run, tx: optax.GradientTransformation):
  """Compiles the train step from shapes, before any state exists, and checks its memory.

  Returns:
    The compiled (state, batch) -> (state, metrics), state donated.

  Raises:
    errors.UserError: the step will not fit in free memory (train.memory_check="refuse").
  """
  memory_check.check_mode(run.config)
  with status.phase("compiling the train step", run.is_lead) as info:
    compiled = steps.lower_train_step(run.model_config, tx, run.config, run.mesh, run.rules,
                                      run.batch_spec).compile()
    per_device = memory_check.compiled_bytes(compiled)
    if per_device is not None:
      est = memory_check.estimate(per_device, run.mesh.local_devices)
      info.note = memory_check.describe(est)
  if per_device is not None:
    warning = memory_check.check(est, run.config)
    if warning and run.is_lead:
      print(warning, flush=True)
  return compiled


def _check_init_paths(config: ml_collections.ConfigDict) -> None:
  """The weights the run starts from exist and are converted folders, before any compile."""
  if config.init_from:
    weights.check_model_init(config.init_from)
  elif config.model.vision_init_from not in ("", defaults.SCRATCH):
    weights.check_vision_init(config.model.vision_init_from)


def _maybe_load_init(config, state):
  """Starts from a converted checkpoint (config.init_from) or ImageNet ResNet weights."""
  vision_init = config.model.vision_init_from
  if not config.init_from and vision_init in ("", defaults.SCRATCH):
    return state
  if config.init_from:
    variables = weights.load_model_init(
        config.init_from, checkpointing.abstract_like(state.variables()))
  else:
    variables = weights.load_vision_init(vision_init, state.variables())
  return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _save_latest(run: run_lib.Run, state, data_iter, loop: LoopState,
                 flags: _FiniteFlags) -> int:
  """Saves the latest checkpoint once the pending steps are known to be finite; returns its step."""
  flags.check()
  step = int(state.step)
  run.checkpoints.save_latest(step, state, data_iter, dataclasses.asdict(loop))
  return step


def _end_of_epoch(run: run_lib.Run, state, loop: LoopState, eval_step, generate_fn, log,
                  step: int, stop: stopping.StopSignals) -> None:
  """Validation, selection, early stopping after a whole epoch; updates `loop` in place.

  Raises:
    stopping.Diverged: the validation loss is not finite (finite but exploded weights).
    errors.Interrupted: a signal came during validation (between two batches).
  """
  config = run.config
  variables = state.variables()
  batches, _ = input_pipeline.make_eval_batches(config, run.tokenizer, "val")
  with partitioning.use_mesh(run.mesh, run.rules):
    val_loss = evaluate.validation_loss(eval_step, variables, stop.between(batches), run.put,
                                        config.eval.val_loss_mean)
  if not math.isfinite(val_loss):
    raise stopping.Diverged(
        f"training diverged: the validation loss at step {step} is {val_loss}; {_last_good(run)}")
  _, scores = run.evaluate_split(variables, "val", generate_fn, (config.train.select_suite,),
                                 stop.between)
  score = scores.values.get(config.train.select_key, 0.0)
  improved = score >= loop.best_score
  if improved:
    loop.best_score, loop.best_epoch, loop.bad_epochs = score, loop.epoch, 0
    run.checkpoints.save_best(step, variables, {"epoch": loop.epoch, "score": score})
  else:
    loop.bad_epochs += 1
  log.validation(step, loop.epoch, val_loss, scores, improved)
  loop.epoch += 1
  max_steps = config.train.max_steps
  for reason, done in (("epochs", loop.epoch >= config.train.epochs),
                       ("patience", loop.bad_epochs >= config.train.max_patience),
                       ("max_steps", bool(max_steps) and step >= max_steps)):
    if done:
      loop.finished, loop.finished_by = True, reason
      break
