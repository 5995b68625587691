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


class RunLog:
  """Writes one JSON object per logged step and per validation to DIR/metrics.jsonl."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = open(self.path, "a", encoding="utf-8") if self.enabled else None
    self._tb = None
    if self.enabled:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
    self._config = config

  def _write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    self._file.write(json.dumps(record, sort_keys=True) + "\n")
    self._file.flush()
    for key, value in record.items():
      if isinstance(value, (int, float)) and key not in ("step", "epoch"):
        self._tb.add_scalar(key, value, record["step"])

  def progress(self, total: int, initial: int, desc: str):
    """A tqdm bar with ETA on an interactive terminal, nothing otherwise."""
    if not self.enabled or not sys.stderr.isatty():
      return _NoProgress()
    return tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=False)

  def train(self, step: int, epoch: int, metrics: dict[str, Any], lrs: dict[str, float],
            images_per_sec: float) -> None:
    """Logs a train step: losses, lrs, throughput, per-layer expert load and drops."""
    m = jax.device_get(metrics)
    record = {"step": step, "epoch": epoch, "loss": float(m["loss"]), "ce": float(m["ce"]),
              "aux_loss": float(m["aux_loss"]), "z_loss": float(m["z_loss"]),
              "grad_norm": float(m["grad_norm"]), "images_per_sec": float(images_per_sec),
              "expert_load": np.asarray(m["expert_load"]).round(6).tolist(),
              "dropped_fraction": np.asarray(m["dropped_fraction"]).round(6).tolist()}
    record.update({f"lr_{name}": float(v) for name, v in lrs.items()})
    if not np.isfinite(record["loss"]):
      raise FloatingPointError(f"non-finite loss {record['loss']} at step {step}")
    self._write(record)
    logging.info("step %d epoch %d loss %.4f ce %.4f aux %.4f %.1f img/s", step, epoch,
                 record["loss"], record["ce"], record["aux_loss"], images_per_sec)

  def validation(self, step: int, epoch: int, val_loss: float, scores: Any,
                 improved: bool) -> None:
    record = {"step": step, "epoch": epoch, "val_loss": float(val_loss), "val_best": improved}
    record.update({f"val_{k.replace('/', '_')}": float(v) for k, v in scores.values.items()})
    self._write(record)
    logging.info("epoch %d validation loss %.4f %s%s", epoch, val_loss, scores.summary(),
                 " (best)" if improved else "")

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()
