"""Run outputs while training: metrics.jsonl, TensorBoard events, a progress bar with ETA.

Only process 0 writes. TensorBoard event files come from tensorboardX, so no
TensorFlow is needed.
"""

import json
import os
import sys
from typing import Any

import jax
import ml_collections
import numpy as np
import tqdm
from absl import logging


class _NoProgress:
  def update(self, n: int = 1) -> None:
    pass

  def close(self) -> None:
    pass


def trim_records(path: str, last_step: int) -> int:
  """Keeps the records of steps <= last_step in a JSONL file (atomically); returns how many went.

  A resumed run repeats the steps after its checkpoint, so their records from the
  interrupted run go (a half-written last line too).
  """
  if not os.path.exists(path):
    return 0
  kept, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        keep = json.loads(line)["step"] <= last_step
      except (ValueError, KeyError, TypeError):
        keep = False
      if keep:
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.writelines(kept)
    os.replace(path + ".tmp", path)
  return dropped


def _finite_or_none(value: float) -> float | None:
  """JSON has no NaN/Infinity: a skipped (non-finite) step's values are written as null."""
  return value if np.isfinite(value) else None


class RunLog:
  """Writes one JSON object per logged step and per validation to DIR/metrics.jsonl.

  `restored_step` is the step the run resumed from (0 for a new run): records
  after it are removed from metrics.jsonl and TensorBoard hides its events after
  it (a new event file with purge_step), so repeated steps appear once.
  """

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, restored_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = None
    self._tb = None
    if self.enabled:
      dropped = trim_records(self.path, restored_step)
      if dropped:
        logging.info("metrics.jsonl: removed %d records after the restored step %d", dropped,
                     restored_step)
      self._file = open(self.path, "a", encoding="utf-8")
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                            purge_step=restored_step + 1)
    self._config = config

  def _write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps(record, sort_keys=True) + "\n")
    self._file.flush()
    for key, value in record.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in (
          "step", "epoch"):
        self._tb.add_scalar(key, value, record["step"])

  def progress(self, total: int, initial: int, desc: str):
    """A tqdm bar with ETA on an interactive terminal, nothing otherwise."""
    if not self.enabled or not sys.stderr.isatty():
      return _NoProgress()
    return tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

  def train(self, step: int, epoch: int, metrics: dict[str, Any], lrs: dict[str, float],
            images_per_sec: float, skipped_steps: int = 0) -> None:
    """Logs a train step: losses, lrs, throughput, per-layer expert load and drops.

    skipped_steps counts the run's non-finite steps whose update was not applied;
    a skipped step's own non-finite values are logged as null.
    """
    m = jax.device_get(metrics)
    record = {"step": step, "epoch": epoch, "images_per_sec": float(images_per_sec),
              "expert_load": np.asarray(m["expert_load"]).round(6).tolist(),
              "dropped_fraction": np.asarray(m["dropped_fraction"]).round(6).tolist(),
              "skipped_steps": skipped_steps}
    record.update({k: _finite_or_none(float(m[k]))
                   for k in ("loss", "ce", "aux_loss", "z_loss", "grad_norm")})
    record.update({f"lr_{name}": float(v) for name, v in lrs.items()})
    self._write(record)
    logging.info("step %d epoch %d loss %.4f ce %.4f aux %.4f %.1f img/s", step, epoch,
                 m["loss"], m["ce"], m["aux_loss"], images_per_sec)

  def validation(self, step: int, epoch: int, val_loss: float, scores: Any,
                 improved: bool) -> None:
    record = {"step": step, "epoch": epoch, "val_loss": float(val_loss), "val_best": improved}
    record.update({f"val_{k.replace('/', '_')}": float(v) for k, v in scores.values.items()})
    self._write(record)
    logging.info("epoch %d validation loss %.4f %s%s", epoch, val_loss, scores.summary(),
                 " (best)" if improved else "")

  def close(self) -> None:
    if self.enabled:
      try:
        self._file.close()
        self._tb.close()
      except OSError as e:  # a full disk: the error that stopped the run is reported instead
        logging.warning("could not flush the run logs: %s", e.strerror)
