"""`python -m micar_jax.data.prepare`: raw published datasets -> OUT/{train,val,test}.jsonl.

Each line is `{"image": <absolute path or list of paths>, "report": <cleaned text>}`.
Membership, order and text follow the reference preprocessors (R2Gen's split
and cleaners for IU X-ray / MIMIC-CXR); rows the reference cannot use (missing
or corrupt image, empty or non-text report, malformed record) are left out and
reported, after the split so the other rows keep their reference split.
OUT is written to a temporary sibling folder and renamed into place.
"""

import collections
import dataclasses
import json
import os
import shutil
import sys
import tempfile

from micar_jax import errors
from micar_jax.data.prepare import common, covctr, mmretinal, pgross, r2gen, roco

DATASETS = ("covctr", "mmretinal", "pgross", "roco", "iu_xray", "mimic_cxr", "synthetic")
# Vocabulary threshold used for the coverage figure (the reference's min frequency).
COVERAGE_MIN_FREQUENCY = 3


@dataclasses.dataclass
class Result:
  """What `prepare` did: examples and left-out rows per split, and the summary lines."""
  examples: dict[str, int]
  skipped: dict[str, int]
  bad_rows: list[tuple[str, str, str]]
  summary: list[str]


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
  for split in common.SPLITS:
    tokens = [t for r in reports[split] for t in r.split()]
    coverage = sum(t in vocab for t in tokens) / len(tokens) if tokens else 0.0
    mean_len = len(tokens) / len(reports[split]) if reports[split] else 0.0
    lines.append(f"{split}: {len(reports[split])} examples, vocabulary coverage {coverage:.2%} "
                 f"(train vocabulary: {len(vocab)} words with count >= {min_frequency}), "
                 f"mean report length {mean_len:.1f} tokens")
  return lines


def _load(dataset: str, raw_dir: str, bad: common.BadRows, stage: str,
          out_dir: str) -> dict[str, list[common.Example]]:
  if dataset == "covctr":
    return covctr.load(raw_dir, bad)
  if dataset == "mmretinal":
    return mmretinal.load(raw_dir, bad)
  if dataset == "pgross":
    return pgross.load(raw_dir, bad)
  if dataset == "roco":
    return roco.load(raw_dir, bad, stage, out_dir)
  return r2gen.load(raw_dir, bad, dataset)


def _read_reports(out_dir: str) -> dict[str, list[str]]:
  out = {}
  for split in common.SPLITS:
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
  return Result({s: len(r) for s, r in reports.items()}, {s: 0 for s in common.SPLITS}, [],
                summarize(reports))


def prepare(dataset: str, raw_dir: str, out_dir: str, strict: bool = False,
            stream=sys.stderr) -> Result:
  """Prepares one real dataset from its published files.

  Args:
    dataset: one of DATASETS other than "synthetic".
    raw_dir: the dataset as published (layout per dataset, see the module docs).
    out_dir: destination; must not exist or be empty. Written atomically.
    strict: the first bad row raises instead of being left out.
    stream: where left-out rows are reported, one line each.

  Returns:
    counts per split, the left-out rows (split, file and row, reason) and summary lines.

  Raises:
    UserError: unknown dataset, unusable raw folder or output folder, or (strict) a bad row.
  """
  if dataset not in DATASETS or dataset == "synthetic":
    raise errors.UserError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
  raw_dir, out_dir = os.path.abspath(raw_dir), os.path.abspath(out_dir)
  if not os.path.isdir(raw_dir):
    raise errors.UserError(f"--raw_dir {raw_dir} is not a folder")
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise errors.UserError(f"{out_dir} already exists and is not empty; remove it first")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.prepare-", dir=parent)
  try:
    bad = common.BadRows(strict, stream)
    examples = _load(dataset, raw_dir, bad, stage, out_dir)
    for split in common.SPLITS:
      with open(os.path.join(stage, f"{split}.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples[split])
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)
    os.rename(stage, out_dir)
  except BaseException:
    shutil.rmtree(stage, ignore_errors=True)
    raise
  summary = summarize({s: [e.report for e in examples[s]] for s in common.SPLITS})
  return Result({s: len(examples[s]) for s in common.SPLITS},
                {s: bad.count(s) for s in ("-",) + common.SPLITS}, bad.rows, summary)
