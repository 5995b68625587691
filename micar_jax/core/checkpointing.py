"""Orbax checkpoints of a run: the latest (resumable) and the best (by validation score).

Layout under the workdir:
  checkpoints/latest/<step>/{state, data_iter, meta}   train state, grain iterator,
                                                        loop state (epoch, early stopping)
  checkpoints/best/<step>/{state, meta}                 params + batch_stats, score
  run_config.json                                       what a checkpoint must agree with

Saves are atomic (Orbax writes to a temporary folder and renames), so a run
killed mid-save restarts from the previous complete checkpoint. No pickle.
A save that runs out of disk space removes its temporary folder and raises
`DiskFullError` (one line); the previous checkpoint stays the latest.
"""

import contextlib
import dataclasses
import glob
import json
import logging
import os
import shutil
from typing import Any, Iterator

import grain
import jax
import orbax.checkpoint as ocp

from micar_jax import errors

RUN_CONFIG = "run_config.json"


class DiskFullError(errors.UserError):
  """A checkpoint save ran out of disk space; the previous checkpoint is intact."""


class _WithoutOrbaxErrors(logging.Filter):
  """Drops Orbax's error records during a save: each repeats a worker thread's traceback.

  The failed save raises the same error in the caller, which reports it once.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR or "orbax" not in record.pathname


@contextlib.contextmanager
def _saving(manager: ocp.CheckpointManager, step: int, kind: str) -> Iterator[None]:
  """Runs one save; a full disk becomes a DiskFullError and leaves no partial folder."""
  quiet = _WithoutOrbaxErrors()
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(quiet)
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if not errors.is_disk_full(e):
      raise
    directory = os.fspath(manager.directory)
    for partial in glob.glob(os.path.join(directory, f"{step}.orbax-checkpoint-tmp*")):
      shutil.rmtree(partial, ignore_errors=True)
    kept = [s for s in manager.all_steps() if s != step]
    previous = (f"the {kind} checkpoint of step {max(kept)} is intact" if kept
                else f"there is no earlier {kind} checkpoint")
    raise DiskFullError(
        f"saving the {kind} checkpoint of step {step} failed: No space left on device in "
        f"{directory}; {previous}: free some space and rerun the same command to resume") from None
  finally:
    absl_logger.removeFilter(quiet)


def _manager(directory: str, items: tuple[str, ...], keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(directory), item_names=items, options=options)


class Checkpoints:
  """The latest and best checkpoint managers of one workdir."""

  def __init__(self, workdir: str):
    root = os.path.join(workdir, "checkpoints")
    self.latest = _manager(os.path.join(root, "latest"), ("state", "data_iter", "meta"), 2)
    self.best = _manager(os.path.join(root, "best"), ("state", "meta"), 1)

  def save_latest(self, step: int, state: Any, data_iter: Any, meta: dict[str, Any]) -> None:
    """Saves the full train state, the grain iterator and the loop's own state."""
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    _replace_step(self.latest, step)
    with _saving(self.latest, step, "latest"):
      self.latest.save(step, args=ocp.args.Composite(**args), force=True)
      self.latest.wait_until_finished()

  def restore_latest(self, abstract_state: Any, data_iter: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores (state, meta) into `abstract_state`'s shapes/shardings; the iterator in place."""
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def save_best(self, step: int, variables: dict[str, Any], meta: dict[str, Any]) -> None:
    """Keeps only the best model's params and batch statistics."""
    _replace_step(self.best, step)
    with _saving(self.best, step, "best"):
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)), force=True)
      self.best.wait_until_finished()

  def restore_best(self, abstract_variables: dict[str, Any]) -> tuple[dict[str, Any], dict] | None:
    """(variables, meta) of the best checkpoint, or None when there is none yet."""
    step = self.best.latest_step()
    if step is None:
      return None
    restored = self.best.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_variables), meta=ocp.args.JsonRestore()))
    return restored["state"], restored["meta"]

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _replace_step(manager: ocp.CheckpointManager, step: int) -> None:
  """A resumed run may save a step it saved before the interruption: replace it."""
  if step in manager.all_steps():
    manager.delete(step)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) of a pytree of arrays: a restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def check_run_config(workdir: str, run_config: dict[str, Any]) -> None:
  """Records the run's model/vocabulary config, or checks it against the recorded one.

  Raises:
    errors.UserError: the workdir holds a run of an incompatible config.
  """
  path = os.path.join(workdir, RUN_CONFIG)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diffs = sorted(k for k in set(saved) | set(run_config) if saved.get(k) != run_config.get(k))
    if diffs:
      detail = ", ".join(f"{k}: {saved.get(k)!r} -> {run_config.get(k)!r}" for k in diffs[:6])
      raise errors.UserError(
          f"workdir {workdir} holds a checkpoint of an incompatible config ({detail}); "
          "use a new --workdir or the original config")
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(run_config, f, indent=1, sort_keys=True)
  os.replace(tmp, path)


def run_config_of(model_config: Any) -> dict[str, Any]:
  """The fields a checkpoint depends on: every model hyper-parameter that shapes weights."""
  # Fields marked compute-only may change between runs of the same checkpoint.
  skip = model_config.compute_only_fields()
  cfg = {k: v for k, v in dataclasses.asdict(model_config).items() if k not in skip}
  return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
