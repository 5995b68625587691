"""Random-access rows of a split: a prepared jsonl folder or a TFDS data source.

A row is `{"image": <path or encoded bytes, or a list of V of them>, "report": str}`.
`config.data.source` picks "jsonl" (DIR/{train,val,test}.jsonl written by
`python -m micar_jax.data.prepare`) or "tfds" (array_record built by
`micar_jax.data.tfds_builders` under `config.data.tfds_data_dir`).
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import logging

from micar_jax.data import synthetic

SPLITS = ("train", "val", "test")


class MissingDataError(FileNotFoundError):
  """A prepared dataset folder or split file that does not exist."""


def _missing(data_dir: str, split: str) -> MissingDataError:
  return MissingDataError(
      f"{os.path.join(data_dir, split + '.jsonl')} not found; create the dataset with "
      f"`python -m micar_jax.data.prepare --help` (it writes {data_dir}/{{train,val,test}}.jsonl)")


def _resolve(image: Any, data_dir: str) -> str | list[str]:
  if isinstance(image, str):
    return os.path.join(data_dir, image)  # Absolute paths pass through unchanged.
  if isinstance(image, list) and image and all(isinstance(p, str) for p in image):
    return [os.path.join(data_dir, p) for p in image]
  raise ValueError(f"'image' must be a path or a list of paths, got {image!r}")


def read_split(data_dir: str | os.PathLike, split: str) -> list[dict[str, Any]]:
  """Reads DIR/<split>.jsonl in file order, skipping unusable rows.

  A row whose image file is missing, or a malformed line, is skipped and
  counted; one warning line reports the count.

  Returns:
    rows `{"image": str | list[str], "report": str}`; image paths are absolute.

  Raises:
    MissingDataError: the split file does not exist.
  """
  data_dir = os.path.abspath(os.fspath(data_dir))
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  path = os.path.join(data_dir, split + ".jsonl")
  if not os.path.exists(path):
    raise _missing(data_dir, split)
  rows, skipped, first_problem = [], 0, ""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
        image = _resolve(obj["image"], data_dir)
        report = obj["report"]
        if not isinstance(report, str):
          raise ValueError(f"'report' must be a string, got {report!r}")
        paths = image if isinstance(image, list) else [image]
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent:
          raise ValueError(f"missing image {absent[0]}")
      except (ValueError, KeyError, TypeError) as e:
        skipped += 1
        first_problem = first_problem or f"line {line_no}: {type(e).__name__}: {e}"
        continue
      rows.append({"image": image, "report": report})
  if skipped:
    logging.warning("%s: skipped %d of %d rows (first: %s)", path, skipped,
                    skipped + len(rows), first_problem)
  return rows


def open_split(
    config: ml_collections.ConfigDict, split: str, data_dir: str | os.PathLike | None = None
) -> Sequence[dict[str, Any]]:
  """The rows of `split` from the configured source, in a fixed order.

  Args:
    config: run config (data.source, dataset, data_dir, data.tfds_data_dir).
    split: "train", "val" or "test".
    data_dir: overrides config.data_dir for the jsonl source. The synthetic
      dataset is generated in config.data_dir on first use.

  Returns:
    A picklable random-access sequence of rows (see module docstring).
  """
  source = config.data.source
  if source == "jsonl":
    data_dir = os.fspath(data_dir or config.data_dir)
    if config.dataset == "synthetic" and os.path.abspath(data_dir) == os.path.abspath(
        config.data_dir):
      synthetic.ensure_synthetic(config)
    return read_split(data_dir, split)
  if source == "tfds":
    # Lazy: importing tensorflow_datasets costs ~0.5 s that jsonl runs never need.
    from micar_jax.data import tfds_builders  # pylint: disable=g-import-not-at-top

    return tfds_builders.data_source(
        config.dataset, split, config.data.tfds_data_dir or None)
  raise ValueError(f"config.data.source must be 'jsonl' or 'tfds', got {source!r}")


def split_reports(
    config: ml_collections.ConfigDict, split: str, data_dir: str | os.PathLike | None = None
) -> list[str]:
  """The report strings of a split (e.g. to build a vocabulary)."""
  return [r["report"] for r in open_split(config, split, data_dir)]
