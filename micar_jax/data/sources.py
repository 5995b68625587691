"""Random-access rows of a split: a prepared jsonl folder or a TFDS data source.

A row is `{"image": <path or encoded bytes, or a list of V of them>, "report": str}`.
`config.data.source` picks "jsonl" (DIR/{train,val,test}.jsonl written by
`python -m micar_jax.data.prepare`) or "tfds" (array_record built by
`micar_jax.data.tfds_builders` under `config.data.tfds_data_dir`).
"""

import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from micar_jax import errors
from micar_jax.data import jsonl, registry, synthetic

# What open_split raises for a dataset that is not there (jsonl or TFDS).
MissingDataError = jsonl.MissingDataError


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
    generated = registry.DATASETS[config.dataset].generated
    if generated and os.path.abspath(data_dir) == os.path.abspath(config.data_dir):
      synthetic.ensure_synthetic(config)
    return jsonl.read_split(data_dir, split)
  if source == "tfds":
    # Imported here: TFDS is heavy and absent where only the model runs (e.g. the benchmark).
    from micar_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
    return tfds_builders.data_source(
        config.dataset, split, config.data.tfds_data_dir or None)
  raise errors.ConfigError(f"config.data.source must be 'jsonl' or 'tfds', got {source!r}")


def split_reports(
    config: ml_collections.ConfigDict, split: str, data_dir: str | os.PathLike | None = None
) -> list[str]:
  """The report strings of a split (e.g. to build a vocabulary)."""
  return [r["report"] for r in open_split(config, split, data_dir)]
