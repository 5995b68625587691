"""Serving a run that may still be training: the served best checkpoint and the run's progress.

`--mode=serve` only reads the workdir and takes none of its locks, so it can
browse a run while `--mode=train` holds the workdir's lock (and writes). A
background thread polls DIR/checkpoints/best: the first best checkpoint builds
the engine (until then the pages say there is none yet), and a newer one is
restored with verification (`checkpointing.Checkpoints.restore_best`) and
swapped into the engine between two batches; the shapes are equal, so nothing
recompiles. `Progress` reads DIR/metrics.jsonl as the trainer appends to it.
"""

import json
import os
import threading
from typing import Any

import ml_collections
from absl import logging

from micar_jax import errors
from micar_jax.core import checkpointing
from micar_jax.serve import engine as engine_lib
from micar_jax.training import workdir_lock

POLL_S = 2.0


def best_steps(workdir: str) -> list[int]:
  """The finished best checkpoint steps on disk, newest first (a directory listing only).

  Orbax saves into `<step>.orbax-checkpoint-tmp-*` and renames, so a bare
  numeric folder is a complete save.
  """
  try:
    names = os.listdir(os.path.join(workdir, "checkpoints", "best"))
  except OSError:
    return []
  return sorted((int(n) for n in names if n.isdigit()), reverse=True)


class Progress:
  """The run's progress from DIR/metrics.jsonl, read incrementally as the trainer appends.

  A line without its newline is still being written: it is read once complete.
  A file that shrank or was replaced (a resumed run trims it) is read again.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._offset = 0
    self._inode: int | None = None
    self._last: dict[str, Any] | None = None
    self._validation: dict[str, Any] | None = None
    self._lock = threading.Lock()

  def _read(self) -> None:
    try:
      with open(self.path, "rb") as f:
        info = os.fstat(f.fileno())
        if info.st_ino != self._inode or info.st_size < self._offset:
          self._offset, self._inode, self._last, self._validation = 0, info.st_ino, None, None
        f.seek(self._offset)
        data = f.read()
    except OSError:
      return
    complete = data[:data.rfind(b"\n") + 1]
    self._offset += len(complete)
    for line in complete.splitlines():
      try:
        record = json.loads(line)
        step = int(record["step"])
      except (ValueError, KeyError, TypeError):
        continue  # a line a crash left torn, followed by the resumed run's records
      if self._last is None or step >= self._last["step"]:
        self._last = record
      if "val_loss" in record:
        self._validation = record

  def get(self) -> dict[str, Any]:
    """{step, epoch, validation}: the last logged step and epoch, the last validation's
    record (val_* scores, val_best) or None; step and epoch are None before any record."""
    with self._lock:
      self._read()
      last, validation = self._last, self._validation
    return {"step": None if last is None else last["step"],
            "epoch": None if last is None else last.get("epoch"),
            "validation": None if validation is None else dict(validation)}


class Live:
  """The engine of a run folder, built once it has a best checkpoint and kept on the newest.

  Args:
    config: the run config.
    workdir: the run folder (never written).
    max_wait_s: the engine's batching wait.
    poll_s: how often checkpoints/best is looked at.

  Attributes:
    engine: None until the run has a best checkpoint (or config.init_from is set).
    error: why the engine could not be built or updated last time, or None.

  Raises:
    errors.UserError: a config serve cannot use, or a present checkpoint that
      cannot be served (reported at start, in one line).
  """

  def __init__(self, config: ml_collections.ConfigDict | None, workdir: str,
               max_wait_s: float = 0.02, poll_s: float = POLL_S):
    self.config, self.workdir, self.max_wait_s, self.poll_s = config, workdir, max_wait_s, poll_s
    self.engine: Any = None
    self.error: str | None = None
    self.progress = Progress(workdir)
    self._watch = config is not None
    self._owns_engine = True
    # A step without checksums yet may be mid-write of them: it is taken on the next poll.
    self._pending: int | None = None
    if config is not None:
      if best_steps(workdir) or config.init_from:
        self.engine = engine_lib.Engine(config, workdir, max_wait_s)

  @classmethod
  def of(cls, engine: Any, workdir: str) -> "Live":
    """A fixed engine (the caller's, who closes it): no polling."""
    live = cls(None, workdir)
    live.engine, live.config, live._owns_engine = engine, getattr(engine, "config", None), False
    return live

  @property
  def best_step(self) -> int | None:
    return getattr(self.engine, "best_step", None)

  def run(self, stop: threading.Event) -> None:
    """Compiles the engine, then polls for a (newer) best checkpoint until `stop` is set."""
    if self.engine is not None:
      self.engine.warm_up(stop)
    while self._watch and not stop.wait(self.poll_s):
      self.poll(stop)

  def poll(self, stop: threading.Event | None = None) -> None:
    """Builds the engine on the first best checkpoint, or loads a newer one into it."""
    steps = best_steps(self.workdir)
    if not steps or (self.best_step is not None and steps[0] <= self.best_step):
      return
    step_dir = os.path.join(self.workdir, "checkpoints", "best", str(steps[0]))
    if not checkpointing.has_checksums(step_dir) and self._pending != steps[0]:
      self._pending = steps[0]
      return
    try:
      if self.engine is None:
        engine = engine_lib.Engine(self.config, self.workdir, self.max_wait_s)
        self.engine = engine
        logging.info("serving the best checkpoint of step %s", engine.best_step)
        engine.warm_up(stop)
      elif self.engine.load_best():
        logging.info("serving the new best checkpoint of step %d", self.engine.best_step)
      self.error = None
    except errors.UserError as e:
      # Kept serving what it has; the trainer may replace the step (or the user the config).
      if str(e) != self.error:
        logging.warning("cannot serve the best checkpoint: %s", e)
      self.error = str(e)

  def status(self) -> dict[str, Any]:
    """The JSON of /api/progress: the run's progress and what is served."""
    holder = workdir_lock.holder(self.workdir)
    saved = best_steps(self.workdir)
    return dict(self.progress.get(), training=holder is not None and holder["mode"] == "train",
                in_use_by=holder, best_step_saved=saved[0] if saved else None,
                best_step_served=self.best_step, model_loaded=self.engine is not None,
                error=self.error)

  def close(self) -> None:
    if self._owns_engine and self.engine is not None:
      self.engine.close()
