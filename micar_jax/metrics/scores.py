"""One entry point for all caption metric suites.

`SUITES` is the table of suites: name -> the keys it reports and its scoring
function. The suites and their keys (each number names its implementation,
docs/metrics.md §1):
- "reference": the official code's metrics (jury 2.3.1, offline; reference.py)
  as `ref/bleu1..4`, `ref/meteor` (nltk), `ref/rougeL` (jury's bootstrap
  "mid", or the plain mean with rouge_aggregate="mean"), and the selection
  score `ref/score`.
- "coco": pycocoevalcap 1.2 (coco.py) as `coco/bleu1..4`, `coco/meteor`
  (Java METEOR 1.5), `coco/rougeL` (beta 1.2), `coco/cider` (CIDEr-D).
- "ratescore": optional RaTEScore from local weights (ratescore.py) as
  `rs/mean`, `rs/std`.

A metric that cannot run is left out of `values` and named in `skipped` with
a one-line reason (also logged). When nltk METEOR is skipped, `ref/score` is
still computed without its METEOR/4 term and `partial` says so.
"""

import dataclasses
import logging
import os
from typing import Callable, Sequence

from micar_jax.metrics import coco, ratescore, reference, wordnet


@dataclasses.dataclass(frozen=True)
class Scores:
  """Metric values with the reasons for anything missing.

  Attributes:
    values: metric key (e.g. "ref/bleu4") -> value.
    skipped: metric key -> one-line reason it was not computed.
    partial: metric key -> what its value lacks (e.g. "ref/score" without
      METEOR); such a value is not comparable with a complete one.
  """
  values: dict[str, float]
  skipped: dict[str, str]
  partial: dict[str, str]

  def summary(self) -> str:
    """One log line: `key=value` pairs, then skipped and partial keys."""
    parts = [f"{k}={v:.6f}" for k, v in self.values.items()]
    parts += [f"{k}=skipped" for k in self.skipped]
    parts += [f"({k} partial: {why})" for k, why in self.partial.items()]
    return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Options:
  """Where the suites find their resources (see `compute_scores`)."""
  wordnet_dir: str | os.PathLike | None = None
  coco_tokenize: str = "whitespace"
  ratescore_dir: str | os.PathLike | None = None
  meteor_timeout_s: float = coco.meteor_lib.DEFAULT_TIMEOUT_S
  rouge_aggregate: str = "bootstrap"


def _reference_suite(hypotheses: Sequence[str], references: Sequence[str],
                     options: Options) -> Scores:
  skipped, partial = {}, {}
  wn, reason = wordnet.load_wordnet(options.wordnet_dir)
  if wn is None:
    skipped["ref/meteor"] = reason
    partial["ref/score"] = "METEOR/4 term missing (ref/meteor skipped)"
    logging.warning("ref/meteor skipped: %s", reason)
  values = {f"ref/{k}": v for k, v in reference.reference_scores(
      hypotheses, references, wn, options.rouge_aggregate).items()}
  return Scores(values, skipped, partial)


def _coco_suite(hypotheses: Sequence[str], references: Sequence[str], options: Options) -> Scores:
  got, missed = coco.coco_scores(hypotheses, references, options.coco_tokenize,
                                 options.meteor_timeout_s)
  return Scores({f"coco/{k}": v for k, v in got.items()},
                {f"coco/{k}": v for k, v in missed.items()}, {})


def _ratescore_suite(hypotheses: Sequence[str], references: Sequence[str],
                     options: Options) -> Scores:
  got, missed = ratescore.ratescore_scores(hypotheses, references, options.ratescore_dir)
  skipped = {}
  for reason in missed.values():
    skipped.update({"rs/mean": reason, "rs/std": reason})
    logging.warning("ratescore skipped: %s", reason)
  return Scores({f"rs/{k}": v for k, v in got.items()}, skipped, {})


@dataclasses.dataclass(frozen=True)
class Suite:
  """A metric suite: the keys it can report and the function that scores pairs."""
  keys: tuple[str, ...]
  fn: Callable[[Sequence[str], Sequence[str], Options], Scores]


# The caption metrics both the reference and the coco suite report.
_CAPTION = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL")
# Suite name -> Suite, in the order their values are reported.
SUITES = {
    "reference": Suite(tuple(f"ref/{k}" for k in _CAPTION + ("score",)), _reference_suite),
    "coco": Suite(tuple(f"coco/{k}" for k in _CAPTION + ("cider",)), _coco_suite),
    "ratescore": Suite(("rs/mean", "rs/std"), _ratescore_suite),
}


def check_selection(suite: str, key: str) -> None:
  """Raises a one-line ValueError unless `suite` is a suite that reports `key`."""
  if suite not in SUITES:
    raise ValueError(f"train.select_suite={suite!r} is not a metric suite; expected one of "
                     f"{tuple(SUITES)}")
  if key not in SUITES[suite].keys:
    raise ValueError(f"train.select_key={key!r} is not reported by suite {suite!r}; expected "
                     f"one of {SUITES[suite].keys}")


def compute_scores(hypotheses: Sequence[str], references: Sequence[str],
                   suites: Sequence[str] = ("reference", "coco"),
                   wordnet_dir: str | os.PathLike | None = None,
                   coco_tokenize: str = "whitespace",
                   ratescore_dir: str | os.PathLike | None = None,
                   meteor_timeout_s: float = coco.meteor_lib.DEFAULT_TIMEOUT_S,
                   rouge_aggregate: str = "bootstrap") -> Scores:
  """Scores `[num_pairs]` generated reports against their references.

  Args:
    hypotheses: `[num_pairs]` generated reports.
    references: `[num_pairs]` ground-truth reports, one per hypothesis.
    suites: any of "reference", "coco", "ratescore".
    wordnet_dir: extra nltk data folder holding WordNet, searched before
      nltk's own paths (see wordnet.py); None for nltk's paths only.
    coco_tokenize: "whitespace" or "jury" (see `coco.coco_scores`).
    ratescore_dir: folder with the RaTEScore models; None skips RaTEScore.
    meteor_timeout_s: longest wait for one reply of Java METEOR (coco suite).
    rouge_aggregate: ref/rougeL as jury's bootstrap median or the plain mean.

  Returns:
    A `Scores`.

  Raises:
    ValueError: unknown suite, or the pairs are empty, unaligned or not strings.
  """
  unknown = [s for s in suites if s not in SUITES]
  if unknown:
    raise ValueError(f"unknown metric suite(s) {unknown}; expected some of {tuple(SUITES)}")
  reference.check_pairs(hypotheses, references)
  options = Options(wordnet_dir, coco_tokenize, ratescore_dir, meteor_timeout_s, rouge_aggregate)
  values, skipped, partial = {}, {}, {}
  for name, suite in SUITES.items():
    if name in suites:
      got = suite.fn(hypotheses, references, options)
      values.update(got.values)
      skipped.update(got.skipped)
      partial.update(got.partial)
  return Scores(values, skipped, partial)
