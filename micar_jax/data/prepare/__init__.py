"""`python -m micar_jax.data.prepare`: raw published datasets -> OUT/{train,val,test}.jsonl.

Each line is `{"image": <path or list of paths, relative to OUT>, "report": <cleaned text>}`.
Membership, order and text follow the reference preprocessors (R2Gen's split
and cleaners for IU X-ray / MIMIC-CXR); rows the reference cannot use (missing
or corrupt image, empty or non-text report, malformed record) are left out,
after the split so the other rows keep their reference split, and listed in
OUT/skipped.tsv. The raw layout each dataset needs is in docs/datasets.md.
OUT is written to a temporary sibling folder and renamed into place; see
`micar_jax.data.prepare.output` for what it holds.
"""

import collections
import dataclasses
import importlib
import json
import os
import shutil
import sys

from micar_jax import errors
from micar_jax.data import jsonl, registry
from micar_jax.data.prepare import common, output

# The `--dataset` choices, in registry order.
DATASETS = tuple(registry.DATASETS)
# Vocabulary threshold used for the coverage figure (the reference's min frequency).
COVERAGE_MIN_FREQUENCY = 3


@dataclasses.dataclass
class Result:
  """What `prepare` did: examples and left-out rows per split, and the summary lines.

  `summary` holds one line per split, a line counting the images with an EXIF
  orientation tag (only when there are any: they are kept as stored, as the
  reference reads them), then the left-out rows' summary (counts by kind, the
  first few rows, the path of OUT/skipped.tsv). `exif_oriented` is that count.
  """
  examples: dict[str, int]
  skipped: dict[str, int]
  bad_rows: list[tuple[str, str, str]]
  summary: list[str]
  exif_oriented: int = 0


def summarize(reports: dict[str, list[str]], min_frequency: int = COVERAGE_MIN_FREQUENCY
              ) -> list[str]:
  """One line per split: examples, vocabulary coverage and mean report length.

  Coverage is the share of the split's whitespace tokens that belong to the
  train vocabulary (train tokens seen at least `min_frequency` times), i.e. the
  share of tokens a word tokenizer built on train would not map to `<unk>`.
  """
  counts = collections.Counter(t for r in reports["train"] for t in r.split())
  vocab = {t for t, c in counts.items() if c >= min_frequency}
  lines = []
  for split in registry.SPLITS:
    tokens = [t for r in reports[split] for t in r.split()]
    coverage = sum(t in vocab for t in tokens) / len(tokens) if tokens else 0.0
    mean_len = len(tokens) / len(reports[split]) if reports[split] else 0.0
    lines.append(f"{split}: {len(reports[split])} examples, vocabulary coverage {coverage:.2%} "
                 f"(train vocabulary: {len(vocab)} words with count >= {min_frequency}), "
                 f"mean report length {mean_len:.1f} tokens")
  return lines


def _read_reports(out_dir: str) -> dict[str, list[str]]:
  out = {}
  for split in registry.SPLITS:
    with open(os.path.join(out_dir, f"{split}.jsonl"), encoding="utf-8") as f:
      out[split] = [json.loads(line)["report"] for line in f if line.strip()]
  return out


def prepare_synthetic(out_dir: str, sizes: tuple[int, int, int], seed: int,
                      image_size: int) -> Result:
  """Writes the synthetic dataset (micar_jax.data.synthetic) and summarizes it."""
  from micar_jax.data import synthetic  # Lazy: only this dataset draws images.
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise errors.UserError(f"{out_dir} already exists and is not empty; remove it first")
  synthetic.generate(out_dir, tuple(sizes), seed, image_size)
  reports = _read_reports(out_dir)
  return Result({s: len(r) for s, r in reports.items()}, {s: 0 for s in registry.SPLITS}, [],
                summarize(reports) + output.skipped_summary([], out_dir))


def prepare(dataset: str, raw_dir: str, out_dir: str, strict: bool = False,
            stream=sys.stderr) -> Result:
  """Prepares one real dataset from its published files.

  Args:
    dataset: one of DATASETS that has a loader (all but "synthetic").
    raw_dir: the dataset as published (layout per dataset: docs/datasets.md).
    out_dir: destination; must not exist or be empty. Written atomically.
    strict: the first bad row raises instead of being left out.
    stream: where one-line notices go while preparing (absent optional parts,
      how the images were placed).

  Returns:
    counts per split, the left-out rows (split, file and row, reason) and the
    summary lines (per split, then the left-out rows by kind).

  Raises:
    UserError: unknown dataset, unusable raw folder or output folder, or (strict) a bad row.
  """
  spec = registry.DATASETS.get(dataset)
  if spec is None or not spec.loader:
    raise errors.UserError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
  raw_dir, out_dir = os.path.abspath(raw_dir), os.path.abspath(out_dir)
  if not os.path.isdir(raw_dir):
    raise errors.UserError(f"--raw_dir {raw_dir} is not a folder")
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise errors.UserError(f"{out_dir} already exists and is not empty; remove it first")
  stage = jsonl.make_stage_dir(out_dir)
  try:
    bad = common.BadRows(strict)
    request = common.Request(spec, raw_dir, stage, out_dir, stream)
    # The registry names the loader module, so a new dataset needs no edit here.
    examples = importlib.import_module(spec.loader).load(request, bad)
    if bad.rows and not any(examples.values()):
      raise errors.UserError(output.nothing_usable(bad.rows))
    examples = output.place_images(examples, request)
    output.write_jsonl(examples, stage)
    output.write_skipped(bad.rows, stage)
    oriented, num_images = output.count_exif_oriented(examples, stage)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)
    os.rename(stage, out_dir)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  summary = summarize({s: [e.report for e in examples[s]] for s in registry.SPLITS})
  if not examples["train"]:
    summary.append("warning: train is empty; this folder can be tested on, not trained on")
  return Result({s: len(examples[s]) for s in registry.SPLITS},
                {s: bad.count(s) for s in ("-",) + registry.SPLITS}, bad.rows,
                summary + output.exif_summary(oriented, num_images)
                + output.skipped_summary(bad.rows, out_dir), oriented)
