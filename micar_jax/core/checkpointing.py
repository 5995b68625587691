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

Integrity: after each save, process 0 writes `<step>/checksums.json`, the
SHA-256 of every file of the step. A restore verifies them first; a step that
fails verification (bit rot, a bad copy, a truncated file) or cannot be read
is reported in one line and the next older step is tried, so a run resumes
from its newest intact state. A step saved before checksums existed restores
unverified (and says so).

Layouts: a step stores the ResNet blocks scanned or one by one, as the model
that saved it had them (`model.scan_blocks`). A restore reads the step's own
layout from its metadata, restores in it and moves the blocks into the
target's layout (`models.block_layout`, exact), optimizer moments included, so
switching scan_blocks keeps a run resumable.
"""

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Iterator

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging as absl_logging

from micar_jax import errors
from micar_jax.models import block_layout

RUN_CONFIG = "run_config.json"
# Per step: {relative file path: sha256 hex digest} of every other file of the step.
CHECKSUMS = "checksums.json"
_READ_CHUNK = 1 << 22


class CorruptCheckpointError(errors.UserError):
  """No checkpoint of a kind is intact (each failed verification or could not be read)."""


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


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_READ_CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _step_files(step_dir: str) -> list[str]:
  """Every file of a step folder except the checksum file, relative, sorted."""
  found = []
  for root, _, files in os.walk(step_dir):
    found += [os.path.relpath(os.path.join(root, name), step_dir) for name in files]
  return sorted(f for f in found if f != CHECKSUMS)


def write_checksums(step_dir: str) -> None:
  """Records the SHA-256 of every file of a finished step (process 0; atomic rename)."""
  if jax.process_index() != 0:
    return
  sums = {rel: _sha256(os.path.join(step_dir, rel)) for rel in _step_files(step_dir)}
  tmp = os.path.join(step_dir, CHECKSUMS + ".tmp")
  with open(tmp, "w") as f:
    json.dump(sums, f, indent=0, sort_keys=True)
  os.replace(tmp, os.path.join(step_dir, CHECKSUMS))


def has_checksums(step_dir: str) -> bool:
  return os.path.exists(os.path.join(step_dir, CHECKSUMS))


def verify(step_dir: str) -> str | None:
  """None when every recorded file is present and unchanged, else what is wrong (a phrase).

  A step without a checksum file (saved before checksums existed) passes: there
  is nothing to check it against.
  """
  path = os.path.join(step_dir, CHECKSUMS)
  if not has_checksums(step_dir):
    return None
  try:
    with open(path) as f:
      sums = json.load(f)
  except (OSError, ValueError) as e:
    return f"its {CHECKSUMS} is unreadable ({e})"
  for rel, expected in sorted(sums.items()):
    file = os.path.join(step_dir, rel)
    if not os.path.isfile(file):
      return f"{rel} is missing"
    if _sha256(file) != expected:
      return f"{rel} does not match its checksum"
  return None


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


class Checkpoints:
  """The latest and best checkpoint managers of one workdir.

  Attributes:
    latest, best: the Orbax managers.
    unusable: "<kind>/<step>: why" of each step a restore skipped (newest first).
    intact_step: the newest latest step known good: the one `restore_latest` used or
      the last one this object saved (None before either).
    unverified_step: set when `restore_latest` used a step without checksums.
  """

  def __init__(self, workdir: str):
    root = os.path.join(workdir, "checkpoints")
    self.latest = _manager(os.path.join(root, "latest"), ("state", "data_iter", "meta"), 2)
    self.best = _manager(os.path.join(root, "best"), ("state", "meta"), 1)
    self.unusable: list[str] = []
    self.intact_step: int | None = None
    self.unverified_step: int | None = None

  def _restore_newest_intact(self, manager: ocp.CheckpointManager, kind: str,
                             restore: Any) -> Any | None:
    """restore(step) on the newest step that verifies and reads; None when there is no step.

    Raises:
      CorruptCheckpointError: steps exist but none is intact.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
      step_dir = os.path.join(os.fspath(manager.directory), str(step))
      problem = verify(step_dir)
      if problem is None:
        try:
          restored = restore(step)
          if kind == "latest":
            self.intact_step = step
            self.unverified_step = None if has_checksums(step_dir) else step
          return step, restored
        except Exception as e:  # pylint: disable=broad-except
          if errors.is_disk_full(e):
            raise
          problem = f"it cannot be read ({_first_line(e)})"
      self.unusable.append(f"{kind}/{step}: {problem}")
      absl_logging.warning("checkpoint %s/%d is unusable: %s; trying an older one", kind, step,
                           problem)
    if steps:
      raise CorruptCheckpointError(
          f"no intact {kind} checkpoint in {manager.directory}: "
          + "; ".join(u for u in self.unusable if u.startswith(kind + "/"))
          + "; restore the folder from a copy, or use a new --workdir")
    return None

  def save_latest(self, step: int, state: Any, data_iter: Any, meta: dict[str, Any]) -> None:
    """Saves the full train state, the grain iterator and the loop's own state."""
    args = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    args["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    _replace_step(self.latest, step)
    with _saving(self.latest, step, "latest"):
      self.latest.save(step, args=ocp.args.Composite(**args), force=True)
      self.latest.wait_until_finished()
      write_checksums(os.path.join(os.fspath(self.latest.directory), str(step)))
    self.intact_step, self.unverified_step = step, None

  def restore_latest(self, abstract_state: Any, data_iter: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores (state, meta) of the newest intact step into `abstract_state`'s
    shapes/shardings, the iterator in place; None when there is no latest checkpoint.

    Raises:
      CorruptCheckpointError: latest checkpoints exist but none is intact.
    """
    def restore(step: int) -> Any:
      stored = _in_stored_layout(self.latest, step, abstract_state)
      restored = self.latest.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(stored),
          data_iter=grain.checkpoint.CheckpointRestore(data_iter),
          meta=ocp.args.JsonRestore()))
      return {"state": block_layout.relayout_placed(restored["state"], abstract_state),
              "meta": restored["meta"]}

    found = self._restore_newest_intact(self.latest, "latest", restore)
    if found is None:
      return None
    return found[1]["state"], found[1]["meta"]

  def save_best(self, step: int, variables: dict[str, Any], meta: dict[str, Any]) -> None:
    """Keeps only the best model's params and batch statistics."""
    _replace_step(self.best, step)
    with _saving(self.best, step, "best"):
      self.best.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(variables), meta=ocp.args.JsonSave(meta)), force=True)
      self.best.wait_until_finished()
      write_checksums(os.path.join(os.fspath(self.best.directory), str(step)))

  def restore_best(self, abstract_variables: dict[str, Any]) -> tuple[dict[str, Any], dict] | None:
    """(variables, meta) of the best checkpoint, or None when there is none yet.

    Raises:
      CorruptCheckpointError: the best checkpoint failed verification or cannot be read.
    """
    def restore(step: int) -> Any:
      stored = _in_stored_layout(self.best, step, abstract_variables)
      restored = self.best.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(stored), meta=ocp.args.JsonRestore()))
      return {"state": block_layout.relayout_placed(restored["state"], abstract_variables),
              "meta": restored["meta"]}

    found = self._restore_newest_intact(self.best, "best", restore)
    if found is None:
      return None
    restored = found[1]
    return restored["state"], restored["meta"]

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def _in_stored_layout(manager: ocp.CheckpointManager, step: int, target: Any) -> Any:
  """The abstract `target` in the ResNet block layout that `step`'s state was saved in."""
  # Read from the files: a manager that has not saved yet has no handler for metadata.
  path = os.path.join(os.fspath(manager.directory), str(step), "state")
  return block_layout.relayout(target, ocp.StandardCheckpointer().metadata(path).item_metadata.tree)


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
