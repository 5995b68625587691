"""Sentence-level scores: one value per generated report, for browsing test results.

Only metrics whose corpus value aggregates per-pair values have a per-pair
form: `ref/rougeL`, `ref/meteor` (needs WordNet) and `coco/cider` (CIDEr-D
with document frequencies from the whole split). The corpus BLEU values have
no per-pair counterpart and are left out. The mean of each key over the split
equals the corpus value of `scores.compute_scores` (for `ref/rougeL` with
rouge_aggregate="mean"; the default, jury's bootstrap median, lies close to it).
"""

import os
from typing import Any, Sequence

from micar_jax.metrics import coco, reference, scores, wordnet


def _reference_pairs(hypotheses: Sequence[str], references: Sequence[str], *,
                     wordnet_dir: str | os.PathLike | None = None) -> dict[str, list[float]]:
  per_pair = {"ref/rougeL": reference.rouge_l_f1(hypotheses, references)}
  wn, _ = wordnet.load_wordnet(wordnet_dir)
  if wn is not None:
    per_pair["ref/meteor"] = reference.meteor_per_pair(
        [reference.jury_tokenize(h) for h in hypotheses],
        [reference.jury_tokenize(r) for r in references], wn)
  return per_pair


def _coco_pairs(hypotheses: Sequence[str], references: Sequence[str], *,
                coco_tokenize: str = "whitespace") -> dict[str, list[float]]:
  cider = coco.cider_per_pair(hypotheses, references, coco_tokenize)
  return {} if cider is None else {"coco/cider": cider}


# Suite name -> its per-pair metrics; keyword-only arguments are options, as in scores.SUITES.
PER_PAIR = {"reference": _reference_pairs, "coco": _coco_pairs}


def sentence_scores(hypotheses: Sequence[str], references: Sequence[str],
                    suites: Sequence[str] = ("reference", "coco"),
                    **options: Any) -> list[dict[str, float]]:
  """`[num_pairs]` dicts {metric key: value} of the suites' per-pair metrics.

  `options` are `scores.compute_scores`'s; each suite takes the ones it needs.
  A metric that cannot run (no WordNet, no pycocoevalcap) is left out.
  """
  reference.check_pairs(hypotheses, references)
  per_pair: dict[str, list[float]] = {}
  for name, fn in PER_PAIR.items():
    if name in suites:
      per_pair.update(fn(hypotheses, references, **scores.pass_options(fn, options)))
  return [{key: float(values[i]) for key, values in per_pair.items()}
          for i in range(len(hypotheses))]
