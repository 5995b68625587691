"""TFDS builder for the prepared datasets (array_record, readable without TF).

One builder, `micar_reports`, with a config per dataset: `micar_reports/covctr`,
`micar_reports/mmretinal`, ... Its manual_dir is a folder written by
`python -m micar_jax.data.prepare` ({train,val,test}.jsonl + images). Build:

  python -m micar_jax.data.tfds_builders --dataset=covctr \
      --manual_dir=data/covctr --tfds_data_dir=$HOME/tensorflow_datasets

then train with `--config.data.source=tfds --config.data.tfds_data_dir=...`.
Examples keep the jsonl order (shuffling disabled), so row i of a TFDS split
is line i of the usable jsonl rows.
"""

import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import flags

from micar_jax import cli, errors
from micar_jax.data import jsonl, registry

BUILDER_NAME = "micar_reports"


class MicarReportsConfig(tfds.core.BuilderConfig):
  """One prepared dataset."""

  def __init__(self, *, num_views: int, **kwargs):
    super().__init__(**kwargs)
    self.num_views = num_views


class MicarReports(tfds.core.GeneratorBasedBuilder):
  """Image-report pairs of a prepared MicarVLMoE dataset."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Prepared jsonl folders as array_record."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Set manual_dir to the folder written by `python -m micar_jax.data.prepare`
  for this dataset: it holds {train,val,test}.jsonl, one line per example,
  `{"image": <path or list of paths>, "report": <cleaned text>}`.
  """
  BUILDER_CONFIGS = [
      MicarReportsConfig(name=d.name, num_views=d.num_views, description=f"Prepared {d.name}.")
      for d in registry.DATASETS.values()
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    # One Image feature per view ("image", "image_1", ...): SkipDecoding, which
    # keeps the original encoded bytes, does not reach into a Sequence.
    # Encoded file bytes are stored as-is: tfds re-encodes only numpy arrays.
    features = {"report": tfds.features.Text()}
    for key in _view_keys(self.builder_config.num_views):
      features[key] = tfds.features.Image()
      features[key.replace("image", "image_path")] = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description="Medical images with cleaned free-text reports.",
        features=tfds.features.FeaturesDict(features),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = os.fspath(dl_manager.manual_dir)
    return {split: self._generate_examples(manual, split) for split in registry.SPLITS
            if os.path.exists(os.path.join(manual, split + ".jsonl"))}

  def _generate_examples(self, data_dir: str, split: str):
    keys = _view_keys(self.builder_config.num_views)
    for i, row in enumerate(jsonl.read_split(data_dir, split)):
      paths = row["image"] if isinstance(row["image"], list) else [row["image"]]
      if len(paths) != len(keys):
        raise errors.UserError(f"{data_dir}/{split}.jsonl row {i}: expected {len(keys)} "
                               f"image(s), got {row['image']!r}")
      example = {"report": row["report"]}
      for key, path in zip(keys, paths):
        example[key] = path
        example[key.replace("image", "image_path")] = path
      yield i, example


def _view_keys(num_views: int) -> list[str]:
  return ["image"] + [f"image_{v}" for v in range(1, num_views)]


class TfdsRows(Sequence):
  """A TFDS split as source rows: `{"image": bytes | list[bytes], "report": str}`."""

  def __init__(self, source: Any, num_views: int):
    self._source = source
    self._keys = _view_keys(num_views)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < len(self):
      raise IndexError(f"row {index} out of range [0, {len(self)})")  # Ends Sequence iteration.
    ex = self._source[index]
    images = [ex[k] for k in self._keys]
    report = ex["report"]
    return {"image": images[0] if len(images) == 1 else images,
            "report": report.decode("utf-8") if isinstance(report, bytes) else report}


def data_source(dataset: str, split: str, data_dir: str | None = None) -> TfdsRows:
  """Opens `micar_reports/<dataset>` split as rows; images stay encoded bytes.

  Raises:
    jsonl.MissingDataError: the dataset has not been built in data_dir.
  """
  if dataset not in registry.DATASETS:
    raise errors.ConfigError(
        f"no TFDS config for dataset {dataset!r}; known: {sorted(registry.DATASETS)}")
  builder = tfds.builder(f"{BUILDER_NAME}/{dataset}", data_dir=data_dir)
  if not builder.is_prepared():
    raise jsonl.MissingDataError(
        f"TFDS {BUILDER_NAME}/{dataset} is not built in {builder.data_dir}; run "
        f"`python -m micar_jax.data.tfds_builders --dataset={dataset} "
        f"--manual_dir=<prepared folder> --tfds_data_dir={data_dir or '<dir>'}`")
  views = registry.DATASETS[dataset].num_views
  decoders = {k: tfds.decode.SkipDecoding() for k in _view_keys(views)}
  return TfdsRows(builder.as_data_source(split=split, decoders=decoders), views)


def build(dataset: str, manual_dir: str, data_dir: str | None = None) -> str:
  """Builds `micar_reports/<dataset>` as array_record; returns its directory."""
  builder = tfds.builder(f"{BUILDER_NAME}/{dataset}", data_dir=data_dir)
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=os.path.abspath(manual_dir)))
  return os.fspath(builder.data_dir)


def define_flags() -> None:
  """Declared only when run as a program: importers (the input pipeline) must not
  register flags that could clash with their own --dataset."""
  flags.DEFINE_enum("dataset", None, list(registry.DATASETS), "Dataset to build.")
  flags.DEFINE_string("manual_dir", None, "Prepared jsonl folder.")
  flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default ~/tensorflow_datasets).")
  flags.mark_flags_as_required(["dataset", "manual_dir"])


def main(argv: Sequence[str]) -> None:
  cli.expect_no_arguments(argv)
  f = flags.FLAGS
  print(build(f.dataset, f.manual_dir, f.tfds_data_dir))


if __name__ == "__main__":
  cli.run(main, define_flags)
