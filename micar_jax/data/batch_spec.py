"""The batch contract: what every mode feeds the model, built once from the config.

A `BatchSpec` is the global batch size B, the image side S, the views V and
the text length T (of the tokenizer, config.data.text_seq_len). A batch is

  images     float32 [B, S, S, 3] ([B, V, S, S, 3] when V > 1)
  input_ids  int32 [B, T]
  pad_mask   int32 [B, T]
  labels     int32 [B, T]
  valid      bool [B]    False for padding rows and unreadable images
  index      int32 [B]   row of the split (-1 for padding rows)

The input pipeline checks what it yields against it; training, the planner and
the benchmark compile on its abstract arrays; initialisation traces its dummy
inputs (their shapes decide the parameters). It lives in data/ so that the
pipeline and everything above it share one definition.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from micar_jax.data import tokenizer as tokenizer_lib

# What the model reads, and what the pipeline adds per row for masking and bookkeeping.
MODEL_KEYS = ("images", "input_ids", "pad_mask", "labels")
BATCH_KEYS = MODEL_KEYS + ("valid", "index")


def split_problem(rows: int, shards: int, what: str) -> str | None:
  """The one divisibility check: why `rows` global rows cannot be split evenly over the
  mesh's batch shards (one line starting with `what`), None when they can."""
  if rows % shards == 0:
    return None
  return (f"{what} does not split over the mesh's {shards} batch shards "
          "(mesh data x fsdp x expert); use a multiple of it")


def padded_rows(rows: int, shards: int, processes: int = 1) -> int:
  """The fewest rows >= `rows` (one process's of `processes`) whose global total
  splits over `shards` batch shards."""
  multiple = math.lcm(shards, processes) // processes
  return -(-rows // multiple) * multiple


def pad_rows(local: Mapping[str, np.ndarray], shards: int,
             processes: int = 1) -> dict[str, np.ndarray]:
  """Appends zero rows (valid=False, index 0) to each [rows, ...] array up to `padded_rows`.

  For evaluation and prediction only, whose callers read back the rows they
  sent; a train batch is never padded (BatchNorm would see the zero rows).
  """
  out = {}
  for name, array in local.items():
    extra = padded_rows(array.shape[0], shards, processes) - array.shape[0]
    if extra:
      array = np.concatenate([array, np.zeros((extra,) + array.shape[1:], array.dtype)])
    out[name] = array
  return out


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """Shapes of one global batch.

  Attributes:
    batch_size: global rows B (all processes together).
    image_size: image side S in pixels (the centre crop).
    num_views: views V per example; 1 drops the view axis.
    text_seq_len: T of the [B, T] token arrays (incl. `<sos>`/`<eos>`).
  """
  batch_size: int
  image_size: int
  num_views: int
  text_seq_len: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  tokenizer: tokenizer_lib.Tokenizer | None = None,
                  batch_size: int | None = None) -> "BatchSpec":
    """The spec of config.data, T from `tokenizer` (else config.data.text_seq_len),
    B = batch_size (else config.train.batch_size)."""
    text_len = config.data.text_seq_len if tokenizer is None else tokenizer.text_seq_len
    return cls(batch_size=int(config.train.batch_size if batch_size is None else batch_size),
               image_size=int(config.data.image_size), num_views=int(config.data.num_views),
               text_seq_len=int(text_len))

  def with_batch_size(self, batch_size: int) -> "BatchSpec":
    """This spec with B = batch_size."""
    return dataclasses.replace(self, batch_size=batch_size)

  def padded(self, shards: int) -> "BatchSpec":
    """The spec after eval padding (`pad_rows`) of one process's batch to `shards`."""
    return self.with_batch_size(padded_rows(self.batch_size, shards))

  def divisibility_problem(self, shards: int, name: str = "train.batch_size") -> str | None:
    """Why B does not split over `shards` batch shards (one line naming `name`), or None."""
    return split_problem(self.batch_size, shards, f"{name}={self.batch_size}")

  def shapes(self, rows: int | None = None,
             keys: Sequence[str] = BATCH_KEYS) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{name: (shape, dtype)} of `keys` for `rows` rows (default B)."""
    b = self.batch_size if rows is None else rows
    views = (self.num_views,) if self.num_views > 1 else ()
    s, t = self.image_size, self.text_seq_len
    every = {"images": ((b, *views, s, s, 3), np.float32),
             "input_ids": ((b, t), np.int32), "pad_mask": ((b, t), np.int32),
             "labels": ((b, t), np.int32), "valid": ((b,), np.bool_), "index": ((b,), np.int32)}
    return {k: (every[k][0], np.dtype(every[k][1])) for k in keys}

  def abstract(self, sharding: Any = None,
               keys: Sequence[str] = BATCH_KEYS) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of the global batch (each with `sharding` when given): what
    `Run.put` makes of a pipeline batch, for compiling before any data exists."""
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for k, (shape, dtype) in self.shapes(keys=keys).items()}

  def zeros(self, keys: Sequence[str] = BATCH_KEYS) -> dict[str, np.ndarray]:
    """Host arrays of B zero rows (valid=False): to fill, or to compile on."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.shapes(keys=keys).items()}

  def dummy(self) -> tuple[jax.Array, jax.Array]:
    """Zero images [1, (V,) S, S, 3] float32 and input_ids [1, T] int32: the inputs
    `model.init` traces, so they decide the parameters."""
    shapes = self.shapes(rows=1, keys=("images", "input_ids"))
    return tuple(jnp.zeros(shape, dtype) for shape, dtype in shapes.values())

  def random(self, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A full-length batch of B random rows (for benchmarks), MODEL_KEYS only.

    Returns:
      images float32 [B, (V,) S, S, 3] standard normal; input_ids, labels (the ids
      shifted by one) and pad_mask (all ones) int32 [B, T], ids in [4, vocab_size)
      so that no label is `<pad>`.
    """
    rng = np.random.default_rng(seed)
    b, t = self.batch_size, self.text_seq_len
    # Drawn in this order (ids, then images), so a seed gives the same batch as always.
    ids = rng.integers(4, vocab_size, (b, t + 1), dtype=np.int32)
    images = rng.standard_normal(self.shapes(keys=("images",))["images"][0], np.float32)
    return {"images": images, "input_ids": ids[:, :-1], "labels": ids[:, 1:],
            "pad_mask": np.ones((b, t), np.int32)}

  def check(self, batch: Mapping[str, Any], rows: int | None = None) -> None:
    """Checks one process's batch: exactly BATCH_KEYS with the spec's shapes and dtypes.

    Args:
      batch: {name: array}, e.g. what the input pipeline yields.
      rows: its rows (default B / process count, one process's share).

    Raises:
      ValueError: a key is missing or extra, or an array's shape or dtype differs
        (a bug: the pipeline and the compiled step disagree).
    """
    if rows is None:
      rows = self.batch_size // jax.process_count()
    want = self.shapes(rows)
    problems = [f"{k} missing" for k in want if k not in batch]
    problems += [f"{k} unexpected" for k in batch if k not in want]
    for k, (shape, dtype) in want.items():
      if k in batch:
        got = batch[k] if hasattr(batch[k], "dtype") else np.asarray(batch[k])
        if tuple(got.shape) != shape or np.dtype(got.dtype) != dtype:
          problems.append(f"{k} {np.dtype(got.dtype).name}{list(got.shape)}, expected "
                          f"{dtype.name}{list(shape)}")
    if problems:
      raise ValueError(f"batch does not match {self}: " + "; ".join(problems))
