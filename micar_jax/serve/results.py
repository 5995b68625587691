"""What `--mode=test` wrote, as the web app lists it: examples, their scores, the corpus scores.

Reads DIR/test/examples.jsonl (written by `evaluate.write_examples_jsonl`)
and DIR/test/scores.json; a run tested before examples.jsonl existed falls
back to generated_reports.csv, without per-example scores. Image paths are
stored relative to the run or data folder (`evaluate.stored_image`); `load`
turns them into file paths.
"""

import csv
import dataclasses
import json
import os
import re
from typing import Sequence

from micar_jax import evaluate

ORDERS = ("asc", "desc")


@dataclasses.dataclass(frozen=True)
class Example:
  """One test example: `image` is a path (or a list of V paths for multi-view data)."""
  index: int
  image: str | list[str]
  generated: str
  reference: str
  scores: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Results:
  """A run's test results (empty when it has not been tested yet).

  Attributes:
    examples: in split order.
    corpus: scores.json's label-reference scores (metric key -> value).
    skipped: metric key -> why it was not computed.
    score_keys: the per-example score keys, in file order.
  """
  examples: list[Example]
  corpus: dict[str, float]
  skipped: dict[str, str]
  score_keys: list[str]

  def get(self, index: int) -> Example | None:
    return next((e for e in self.examples if e.index == index), None)


def load(workdir: str, data_dir: str | None = None) -> Results:
  """Reads the test outputs of the run in `workdir`; missing files give empty results.

  Image paths are resolved in the run folder, then in `data_dir` (None: the
  one the run's config.json records), so a moved run folder keeps its images.
  """
  test_dir = os.path.join(workdir, "test")
  scores_path = os.path.join(test_dir, "scores.json")
  scores = {}
  if os.path.exists(scores_path):
    with open(scores_path, encoding="utf-8") as f:
      scores = json.load(f)
  examples_path = os.path.join(test_dir, "examples.jsonl")
  csv_path = os.path.join(test_dir, "generated_reports.csv")
  if os.path.exists(examples_path):
    with open(examples_path, encoding="utf-8") as f:
      examples = [Example(**json.loads(line)) for line in f if line.strip()]
  elif os.path.exists(csv_path):
    with open(csv_path, newline="", encoding="utf-8") as f:
      examples = [Example(i, r["image"].split(";") if ";" in r["image"] else r["image"],
                          r["generated"], r["reference"], {})
                  for i, r in enumerate(csv.DictReader(f))]
  else:
    examples = []
  examples = [dataclasses.replace(e, image=evaluate.resolve_image(e.image, workdir, data_dir))
              for e in examples]
  keys = list(dict.fromkeys(k for e in examples for k in e.scores))
  return Results(examples, scores.get("label_references", {}), scores.get("skipped", {}), keys)


def words(text: str) -> list[str]:
  """Lower-cased words of a report (punctuation dropped), for matching and filtering."""
  return re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())


def select(examples: Sequence[Example], word: str = "", sort: str = "index",
           order: str = "asc", min_score: float | None = None) -> list[Example]:
  """Filters and sorts examples.

  Args:
    examples: the run's examples.
    word: keep examples whose generated or reference report contains this word
      (or every word of a phrase); "" keeps all.
    sort: "index" or a per-example score key; examples lacking it sort last.
    order: "asc" or "desc".
    min_score: with a score key as `sort`, keep examples with a score >= this.
  """
  wanted = words(word)
  if wanted:
    examples = [e for e in examples
                if set(wanted) <= set(words(e.generated)) | set(words(e.reference))]
  if sort != "index" and min_score is not None:
    examples = [e for e in examples if e.scores.get(sort, float("-inf")) >= min_score]
  if sort == "index":
    return sorted(examples, key=lambda e: e.index, reverse=order == "desc")
  present = [e for e in examples if sort in e.scores]
  absent = [e for e in examples if sort not in e.scores]
  return sorted(present, key=lambda e: e.scores[sort], reverse=order == "desc") + absent


def matches(text: str, other: str) -> list[tuple[str, bool]]:
  """Splits `text` on whitespace; each piece is paired with whether `other` has its word."""
  vocabulary = set(words(other))
  return [(piece, bool(words(piece)) and set(words(piece)) <= vocabulary)
          for piece in text.split()]
