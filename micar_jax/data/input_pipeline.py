"""grain input pipelines: training (shuffled, resumable) and evaluation.

Every batch is a dict of numpy arrays for this process's share of the global
batch (B = global batch / process count), checked against its
`batch_spec.BatchSpec` before it is yielded:

  images     float32 [B, H, W, 3] ([B, V, H, W, 3] when config.data.num_views > 1)
  input_ids  int32 [B, T]   <sos> report <eos> <pad>...
  pad_mask   int32 [B, T]   input_ids != <pad>
  labels     int32 [B, T]   report <eos> <pad>...
  valid      bool [B]       False for padding rows and unreadable images
  index      int32 [B]      row of the split (-1 for padding rows)

Global batch g of an epoch is rows perm[g*GB:(g+1)*GB] of that epoch's
permutation (np.random.default_rng([seed, epoch])); process p takes the p-th
contiguous slice of it, so the data order does not depend on the process or
worker count. Batches are built whole inside grain's MapDataset and then
prefetched by threads or worker processes, and the iterator's get_state /
set_state (or grain.checkpoint.CheckpointSave/Restore with orbax) resumes at
exactly the next batch. Batches of files a user names for prediction are
micar_jax/data/predict_inputs.py's.
"""

import math
from collections.abc import Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from micar_jax import errors
from micar_jax.data import batch_spec, sources
from micar_jax.data import images as images_lib
from micar_jax.data import tokenizer as tokenizer_lib

# Threads decoding batches in each (main or worker) process, and the batches
# each keeps ready; batches are large (B*H*W*3 floats), so the buffer is small.
READ_THREADS, READ_BUFFER = 4, 8


def _local_batch(global_batch: int) -> int:
  count = jax.process_count()
  if global_batch % count:
    raise errors.ConfigError(f"batch size {global_batch} is not divisible by {count} processes")
  return global_batch // count


def steps_per_epoch(config: ml_collections.ConfigDict, num_examples: int) -> int:
  """Training batches per epoch: partial last batch dropped, or kept (padded).

  config.train.keep_last_partial_batch keeps it as a batch padded with
  valid=False rows (note: padding rows still enter BatchNorm statistics).
  """
  if config.train.keep_last_partial_batch:
    return math.ceil(num_examples / config.train.batch_size)
  return num_examples // config.train.batch_size


class _Plan(Sequence):
  """Flat index -> split row (-1 = padding) for this process, epoch after epoch."""

  def __init__(self, num_rows: int, global_batch: int, steps: int, epochs: int,
               seed: int | None):
    self.num_rows, self.global_batch, self.steps, self.epochs = num_rows, global_batch, steps, epochs
    self.seed = seed  # None = file order (evaluation).
    self.local_batch = _local_batch(global_batch)
    self.process_index = jax.process_index()
    self._cached = (-1, None)

  def __len__(self) -> int:
    return self.epochs * self.steps * self.local_batch

  def _order(self, epoch: int) -> np.ndarray:
    # One permutation per epoch; each worker caches the epoch it is in.
    if self._cached[0] != epoch:
      order = np.arange(self.num_rows)
      if self.seed is not None:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
      size = self.steps * self.global_batch
      order = np.concatenate([order, np.full(max(0, size - self.num_rows), -1)])[:size]
      self._cached = (epoch, order)
    return self._cached[1]

  def __getitem__(self, i: int) -> int:
    epoch, rest = divmod(int(i), self.steps * self.local_batch)
    step, j = divmod(rest, self.local_batch)
    return int(self._order(epoch)[step * self.global_batch + self.process_index * self.local_batch + j])


class _PlannedRows(Sequence):
  """The grain source: `{"index": row or -1, "row": row dict or None}`."""

  def __init__(self, rows: Sequence[dict[str, Any]], plan: _Plan):
    self.rows, self.plan = rows, plan

  def __len__(self) -> int:
    return len(self.plan)

  def __getitem__(self, i: int) -> dict[str, Any]:
    index = self.plan[i]
    return {"index": index, "row": self.rows[index] if index >= 0 else None}


class _Featurize(grain.transforms.Map):
  """Decodes, preprocesses and tokenizes one planned row."""

  def __init__(self, config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer):
    self.tokenizer = tokenizer
    self.resize_size, self.image_size = config.data.resize_size, config.data.image_size
    self.num_views = config.data.num_views
    self.apply_exif_orientation = config.data.apply_exif_orientation

  def map(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
    return self.apply(element, None)

  def apply(self, element: dict[str, Any], rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """Returns one example (the batch dict without the batch axis)."""
    row, valid = element["row"], element["row"] is not None
    shape = [self.image_size, self.image_size, 3]
    views = np.zeros([self.num_views] + shape, np.float32)
    if valid:
      paths = row["image"] if isinstance(row["image"], list) else [row["image"]]
      try:
        if len(paths) != self.num_views:
          raise images_lib.ImageError(
              f"row {element['index']} has {len(paths)} image(s), config.data.num_views="
              f"{self.num_views}")
        for v, path in enumerate(paths):
          views[v] = images_lib.load(path, self.resize_size, self.image_size, rng,
                                     self.apply_exif_orientation)
      except images_lib.ImageError as e:
        logging.warning("skipping example %d (valid=False): %s", element["index"], e)
        valid = False
    input_ids, pad_mask, labels = self.tokenizer.encode(row["report"] if row else "")
    return {"images": views[0] if self.num_views == 1 else views, "input_ids": input_ids,
            "pad_mask": pad_mask, "labels": labels, "valid": np.bool_(valid),
            "index": np.int32(element["index"])}


class _Checked(grain.transforms.Map):
  """Passes batches through after `BatchSpec.check` (a mismatch is a bug: ValueError)."""

  def __init__(self, spec: batch_spec.BatchSpec, rows: int):
    self.spec, self.rows = spec, rows

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    self.spec.check(batch, self.rows)
    return batch


class _Augment(grain.transforms.RandomMap):
  """`_Featurize` with train-time augmentation; grain seeds rng per element."""

  def __init__(self, featurize: _Featurize):
    self.featurize = featurize

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
    return self.featurize.apply(element, rng)


def _pipeline(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
              rows: Sequence[dict[str, Any]], plan: _Plan, augment: bool) -> grain.IterDataset:
  ds = grain.MapDataset.source(_PlannedRows(rows, plan))
  featurize = _Featurize(config, tokenizer)
  ds = ds.random_map(_Augment(featurize), seed=config.seed) if augment else ds.map(featurize)
  # Batching before the iterator keeps whole batches on one worker, so the
  # batch contents do not depend on the worker count.
  ds = ds.batch(plan.local_batch, drop_remainder=True)
  spec = batch_spec.BatchSpec.from_config(config, tokenizer, batch_size=plan.global_batch)
  ds = ds.map(_Checked(spec, plan.local_batch))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                            prefetch_buffer_size=READ_BUFFER))
  if config.data.worker_count > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.data.worker_count,
        per_worker_buffer_size=config.data.worker_buffer_size))
  return it


def make_train_iterator(
    config: ml_collections.ConfigDict,
    tokenizer: tokenizer_lib.Tokenizer,
    start_epoch: int = 0,
    state: dict[str, Any] | None = None,
) -> grain.DatasetIterator:
  """The training iterator: config.train.epochs epochs back to back.

  Each epoch yields `steps_per_epoch(config, len(train rows))` batches; the
  permutation changes every epoch and depends only on config.seed.

  Args:
    config: run config.
    tokenizer: from `tokenizer.load_or_build_tokenizer`.
    start_epoch: first epoch to yield (for callers that resume by epoch).
    state: an earlier `iterator.get_state()`; resumes at exactly the next batch
      (takes precedence over start_epoch; needs the same process count).

  Returns:
    A grain iterator with get_state()/set_state(); call close() when done if
    config.data.worker_count > 0.
  """
  rows = sources.open_split(config, "train")
  steps = steps_per_epoch(config, len(rows))
  if steps == 0:
    raise errors.UserError(f"train split has {len(rows)} usable rows, fewer than one batch "
                           f"of {config.train.batch_size}")
  plan = _Plan(len(rows), config.train.batch_size, steps, config.train.epochs, config.seed)
  it = iter(_pipeline(config, tokenizer, rows, plan, config.data.augment))
  if state is not None:
    it.set_state(state)
  elif start_epoch:
    # Whole batches per epoch, so skipping epochs is a jump of the batch index.
    it.set_state(_skip_state(it.get_state(), start_epoch * steps))
  return it


def _skip_state(state: dict[str, Any], next_batch: int) -> dict[str, Any]:
  if "next_index" not in state:
    raise ValueError("start_epoch needs config.data.worker_count=0; resume from a saved state")
  return dict(state, next_index=next_batch)


def make_eval_batches(
    config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer, split: str
) -> tuple[grain.IterDataset, Sequence[dict[str, Any]]]:
  """Evaluation batches in file order, padded to config.eval.batch_size.

  Across all batches and processes every row appears exactly once with
  valid=True; `index` points into the returned rows.

  Returns:
    (dataset, rows): iterate `dataset` (each iter() starts over); rows are the
    split's `{"image", "report"}` dicts.
  """
  rows = sources.open_split(config, split)
  steps = math.ceil(len(rows) / config.eval.batch_size)
  plan = _Plan(len(rows), config.eval.batch_size, steps, 1, None)
  return _pipeline(config, tokenizer, rows, plan, augment=False), rows
