"""One entry point for all caption metric suites.

Suites and their keys (each number names its implementation, METRICS.md §1):
- "reference": the official code's metrics (jury 2.3.1, offline; reference.py)
  as `ref/bleu1..4`, `ref/meteor` (nltk), `ref/rougeL` (plain mean, not
  jury's bootstrap "mid"), and the selection score `ref/score`.
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
from typing import Sequence

from micar_jax.metrics import coco, ratescore, reference, wordnet

SUITES = ("reference", "coco", "ratescore")


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


def compute_scores(hypotheses: Sequence[str], references: Sequence[str],
                   suites: Sequence[str] = ("reference", "coco"),
                   wordnet_dir: str | os.PathLike | None = None,
                   coco_tokenize: str = "whitespace",
                   ratescore_dir: str | os.PathLike | None = None) -> Scores:
  """Scores `[num_pairs]` generated reports against their references.

  Args:
    hypotheses: `[num_pairs]` generated reports.
    references: `[num_pairs]` ground-truth reports, one per hypothesis.
    suites: any of "reference", "coco", "ratescore".
    wordnet_dir: extra nltk data folder holding WordNet, searched before
      nltk's own paths (see wordnet.py); None for nltk's paths only.
    coco_tokenize: "whitespace" or "jury" (see `coco.coco_scores`).
    ratescore_dir: folder with the RaTEScore models; None skips RaTEScore.

  Returns:
    A `Scores`.

  Raises:
    ValueError: unknown suite, or the pairs are empty, unaligned or not strings.
  """
  unknown = [s for s in suites if s not in SUITES]
  if unknown:
    raise ValueError(f"unknown metric suite(s) {unknown}; expected some of {SUITES}")
  reference.check_pairs(hypotheses, references)
  values, skipped, partial = {}, {}, {}

  if "reference" in suites:
    wn, reason = wordnet.load_wordnet(wordnet_dir)
    if wn is None:
      skipped["ref/meteor"] = reason
      partial["ref/score"] = "METEOR/4 term missing (ref/meteor skipped)"
      logging.warning("ref/meteor skipped: %s", reason)
    values.update({f"ref/{k}": v for k, v in
                   reference.reference_scores(hypotheses, references, wn).items()})

  if "coco" in suites:
    got, missed = coco.coco_scores(hypotheses, references, coco_tokenize)
    values.update({f"coco/{k}": v for k, v in got.items()})
    skipped.update({f"coco/{k}": v for k, v in missed.items()})

  if "ratescore" in suites:
    got, missed = ratescore.ratescore_scores(hypotheses, references, ratescore_dir)
    values.update({f"rs/{k}": v for k, v in got.items()})
    for reason in missed.values():
      skipped.update({"rs/mean": reason, "rs/std": reason})
      logging.warning("ratescore skipped: %s", reason)
  return Scores(values, skipped, partial)
