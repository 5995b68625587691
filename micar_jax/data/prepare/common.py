"""Shared pieces of the prepare step: records, bad-row bookkeeping, CSV reading, image checks.

The reference preprocessors read CSVs with `pandas.read_csv` defaults and drop
rows with `dropna()`; `read_csv` and `is_na` reproduce the parts of those
semantics that decide membership (BOM, quoted newlines, blank lines, the
default NA strings), without a pandas dependency.
"""

import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

from PIL import Image

from micar_jax import errors
from micar_jax.data import images, registry

# pandas' default `na_values` (pandas 2.2): a field equal to one of these reads as NaN.
PANDAS_NA = frozenset([
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
    "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])

# PIL raises these for unreadable or truncated images.
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadRowError(errors.UserError):
  """A bad input row met with --strict."""


def is_na(value: object) -> bool:
  """Whether pandas would read this CSV field (None: a missing trailing field) as NaN."""
  return value is None or (isinstance(value, str) and value in PANDAS_NA)


def na_to_none(value: str | None) -> str | None:
  """A CSV field as the reference sees it: None where pandas reads NaN."""
  return None if is_na(value) else value


@dataclasses.dataclass(frozen=True)
class Request:
  """One prepare run as the dataset's loader sees it: `load(request, bad)`.

  Attributes:
    dataset: the registry entry being prepared (name, images per example).
    raw_dir: the dataset as published (absolute).
    stage_dir: the temporary output folder being written; a loader that writes
      images puts them here.
    final_dir: where stage_dir is renamed to; a loader names the images it
      writes by their path there.
    stream: where `note` writes one-line notices (e.g. an optional part that is absent).
  """
  dataset: registry.Dataset
  raw_dir: str
  stage_dir: str
  final_dir: str
  stream: TextIO = sys.stderr

  def note(self, text: str) -> None:
    print(text, file=self.stream, flush=True)


@dataclasses.dataclass
class Row:
  """One input record, in reference order, before the bad-row checks.

  Attributes:
    where: file and row, for messages (`reports.csv row 7 (line 12)`).
    image: absolute image path, or a list of them (IU X-ray views); None if unknown.
    report: raw report text as read; None or a non-string when missing or malformed
      (CSV readers pass None for a field pandas reads as NaN).
    clean: the dataset's cleaner, applied to a usable `report`.
    problem: a reason to leave the row out that is known at read time, else None.
  """
  where: str
  image: str | list[str] | None
  report: object
  clean: object
  problem: str | None = None


@dataclasses.dataclass
class Example:
  """One output line: `{"image": ..., "report": ...}`."""
  image: str | list[str]
  report: str

  def to_json(self) -> dict:
    return {"image": self.image, "report": self.report}


class BadRows:
  """Collects left-out rows (split, file and row, reason); with strict=True the first one raises.

  Rows are not printed one by one: `micar_jax.data.prepare.output` summarises
  them by kind and writes the full list to OUT/skipped.tsv.
  """

  def __init__(self, strict: bool):
    self.strict = strict
    self.rows: list[tuple[str, str, str]] = []

  def add(self, split: str, where: str, reason: str) -> None:
    """Records a left-out row of `split` ("-" when it is dropped before the split)."""
    if self.strict:
      raise BadRowError(f"{where}: {reason} (--strict)")
    self.rows.append((split, where, reason))

  def count(self, split: str) -> int:
    return sum(1 for s, _, _ in self.rows if s == split)


@dataclasses.dataclass
class CsvRecord:
  """A CSV data record: `fields` maps header names to values (None if the row is short)."""
  where: str
  fields: dict[str, str | None]
  problem: str | None


def read_csv(path: str) -> tuple[list[str], list[CsvRecord]]:
  """Reads a CSV the way `pandas.read_csv(path)` delimits it.

  UTF-8 with or without BOM; CRLF, LF or CR line ends; quoted fields may hold
  newlines; blank or whitespace-only lines are skipped (pandas skips them too,
  so they do not shift the split). A record with more fields than the header,
  which pandas rejects, is kept with a `problem` so it still takes its place in
  the split and is then left out.

  Returns:
    (header, records); header names are those pandas gives (`Unnamed: i` for blanks).

  Raises:
    UserError: the file is missing, not UTF-8 or has no header.
  """
  name = os.path.basename(path)
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      text = f.read()
  except FileNotFoundError:
    raise errors.UserError(f"{path} not found") from None
  except UnicodeDecodeError as e:
    raise errors.UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
  reader = csv.reader(io.StringIO(text, newline=""))
  header, records, last_line, index = None, [], 0, 0
  try:
    for fields in reader:
      first_line, last_line = last_line + 1, reader.line_num
      if not fields or (len(fields) == 1 and not fields[0].strip(" \t")):
        continue
      if header is None:
        header = [h if h else f"Unnamed: {i}" for i, h in enumerate(fields)]
        continue
      index += 1
      where = f"{name} row {index} (line {first_line})"
      problem = None
      if len(fields) > len(header):
        problem = f"malformed CSV record: {len(fields)} fields, the header has {len(header)}"
      padded = fields + [None] * (len(header) - len(fields))
      records.append(CsvRecord(where, dict(zip(header, padded)), problem))
  except csv.Error as e:
    raise errors.UserError(f"{path}: unreadable CSV near line {reader.line_num}: {e}") from None
  if header is None:
    raise errors.UserError(f"{path} has no header row")
  return header, records


def read_json_object(path: str, what: str, expected: str) -> dict:
  """Loads a JSON object (BOM tolerated); a missing or malformed file is a UserError.

  Args:
    path: the file.
    what: what the file is, for the not-found message (e.g. "PEIR Gross captions").
    expected: what the top level should be, for the wrong-type message.
  """
  try:
    with open(path, encoding="utf-8-sig") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise errors.UserError(f"{path} not found ({what})") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise errors.UserError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(data, dict):
    raise errors.UserError(f"{path}: expected {expected}, got {type(data).__name__}")
  return data


def require_columns(path: str, header: Sequence[str], needed: Iterable[str]) -> None:
  missing = [c for c in needed if c not in header]
  if missing:
    raise errors.UserError(f"{path}: missing column(s) {missing}; found {list(header)}")


def dropna_problem(fields: dict[str, str | None], columns: Iterable[str]) -> str | None:
  """The reason the reference's `dropna()` removes a row, if one of `columns` is empty/NA."""
  for column in columns:
    if is_na(fields.get(column)):
      return f"empty or NA field {column!r} (the reference's dropna() removes the row)"
  return None


def check_image(path: str) -> str | None:
  """None if `path` decodes as training will decode it (images.decode); otherwise why not.

  The whole image is decoded (PIL's `verify()` would pass a truncated file),
  so a file that fails here would fail in every epoch of training.
  """
  try:
    images.decode(path)
  except images.ImageError as e:
    return str(e)
  return None


def check_images(paths: Iterable[str]) -> dict[str, str | None]:
  """check_image over many paths, in threads (the work is mostly file I/O)."""
  unique = list(dict.fromkeys(paths))
  with concurrent.futures.ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 4)) as pool:
    return dict(zip(unique, pool.map(check_image, unique)))


def has_words(cleaned: str) -> bool:
  """Whether a cleaned report holds a letter or a digit (any script).

  Punctuation alone (". , ; ! ?", which some cleaners keep as tokens) is no
  report: trained on, it teaches the model to write nothing.
  """
  return any(c.isalnum() for c in cleaned)


def finish_rows(rows_by_split: dict[str, list[Row]], bad: BadRows,
                image_problems: dict[str, str | None] | None = None) -> dict[str, list[Example]]:
  """Applies the bad-row checks to rows already in reference split order.

  A row is left out (and reported) when it has a known problem, a report that
  is missing, not text, empty after cleaning or without a letter or digit, or a
  missing/corrupt image.

  Args:
    rows_by_split: split -> rows in reference order.
    bad: where left-out rows are reported.
    image_problems: precomputed `check_image` results by path; computed when None.

  Returns:
    split -> examples, in reference order.
  """
  if image_problems is None:
    paths = [p for rows in rows_by_split.values() for r in rows if r.image is not None
             for p in ([r.image] if isinstance(r.image, str) else r.image)]
    image_problems = check_images(paths)
  out = {}
  for split in registry.SPLITS:
    examples = []
    for row in rows_by_split[split]:
      reason = row.problem
      if reason is None and not isinstance(row.report, str):
        reason = f"report is missing or not text ({row.report!r})"
      cleaned = ""
      if reason is None:
        cleaned = row.clean(row.report) if row.report.strip() else ""
        if not set(cleaned.split()) - {".", ","}:
          reason = "empty report"  # nothing, or only the full stops the cleaner adds
        elif not has_words(cleaned):
          reason = f"report has no letter or digit ({' '.join(cleaned.split())!r})"
      if reason is None:
        if row.image is None:
          reason = "no image"
        else:
          views = [row.image] if isinstance(row.image, str) else row.image
          reason = next((image_problems[p] for p in views if image_problems[p]), None)
      if reason is None:
        examples.append(Example(row.image, cleaned))
      else:
        bad.add(split, row.where, reason)
    out[split] = examples
  return out
