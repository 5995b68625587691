"""The reference's caption metrics (jury 2.3.1), reproduced offline.

The official code scores with jury; this module recomputes the same numbers
without jury or network access (docs/metrics.md §2-§5):

- BLEU-1..4: corpus-level tensorflow/nmt `compute_bleu` without smoothing, on
  jury's tokeniser (punctuation -> space, lowercase, whitespace split).
- METEOR: nltk `single_meteor_score` (alpha 0.9, beta 3, gamma 0.5) on jury
  tokens, mean over samples; needs nltk's WordNet (see `wordnet.py`).
- ROUGE-L: rouge-score `rougeL` F1 on the raw strings, no stemmer, aggregated
  as jury does by default: the median ("mid") of rouge-score's 1000-sample
  bootstrap, with the random stream the reference's seeding gives (numpy seed
  123456, rouge1 and rouge2 resampled first); `rouge_aggregate="mean"` gives
  the plain mean over samples instead (docs/metrics.md §4).
- Selection score: (B1+B2+B3+B4)/8 + METEOR/4 + ROUGE-L/4.
"""

import collections
import math
import string
from typing import Any, Sequence

import numpy as np

from micar_jax import errors

_PUNCT_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


def check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
  """Raises a one-line ValueError unless there are >= 1 aligned string pairs."""
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
  if not hypotheses:
    raise ValueError("no hypothesis/reference pairs to score")
  for i, (h, r) in enumerate(zip(hypotheses, references)):
    if not isinstance(h, str) or not isinstance(r, str):
      raise ValueError(f"pair {i} is not two strings: {type(h).__name__}, {type(r).__name__}")


def jury_tokenize(text: str) -> list[str]:
  """Splits like jury's DefaultTokenizer: so `<unk>` -> `unk`, `.` vanishes."""
  return text.translate(_PUNCT_TO_SPACE).lower().split()


def _ngram_counts(tokens: Sequence[str], max_order: int) -> collections.Counter:
  counts = collections.Counter()
  for n in range(1, max_order + 1):
    for i in range(len(tokens) - n + 1):
      counts[tuple(tokens[i:i + n])] += 1
  return counts


def corpus_bleu(hyp_tokens: Sequence[Sequence[str]], ref_tokens: Sequence[Sequence[str]],
                max_order: int = 4) -> list[float]:
  """Corpus BLEU-1..max_order exactly as tensorflow/nmt `compute_bleu`.

  One reference per hypothesis (the project's case, so nmt's "shortest
  reference" length is simply the reference length). No smoothing: any zero
  corpus precision p_1..p_n makes BLEU-n zero.

  Args:
    hyp_tokens: `[num_pairs]` token lists.
    ref_tokens: `[num_pairs]` token lists.
    max_order: highest n-gram order.

  Returns:
    `[max_order]` values: entry n-1 is BLEU-n (geometric mean of p_1..p_n
    times the shared brevity penalty). All zeros when every hypothesis is
    empty, where nmt itself divides by zero.
  """
  matches = [0] * max_order
  possible = [0] * max_order
  hyp_len = ref_len = 0
  for hyp, ref in zip(hyp_tokens, ref_tokens, strict=True):
    hyp_len += len(hyp)
    ref_len += len(ref)
    ref_counts = _ngram_counts(ref, max_order)
    for ngram, count in _ngram_counts(hyp, max_order).items():
      matches[len(ngram) - 1] += min(count, ref_counts[ngram])
    for n in range(1, max_order + 1):
      possible[n - 1] += max(0, len(hyp) - n + 1)
  if hyp_len == 0:
    return [0.0] * max_order
  # BP = 1 when the hypotheses are longer (also covers all-empty references).
  ratio = hyp_len / ref_len if ref_len else math.inf
  bp = 1.0 if ratio > 1.0 else math.exp(1.0 - 1.0 / ratio)
  precisions = [m / p if p else 0.0 for m, p in zip(matches, possible)]
  bleus = []
  for n in range(1, max_order + 1):
    if min(precisions[:n]) > 0:
      bleus.append(bp * math.exp(sum(math.log(p) for p in precisions[:n]) / n))
    else:
      bleus.append(0.0)
  return bleus


ROUGE_AGGREGATES = ("bootstrap", "mean")
# jury's seed: the reference seeds numpy with it before building its metrics, and
# the metric object replays that seed around its computation.
JURY_SEED = 123456
# jury scores rouge1, rouge2, rougeL, rougeLsum in this order with one bootstrap
# aggregator; each type's resampling draws from the same random stream.
_ROUGE_TYPES_BEFORE_L = 2
BOOTSTRAP_SAMPLES = 1000


def rouge_l_f1(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
  """rouge-score `rougeL` F1 per pair (no stemmer, raw strings): `[num_pairs]` floats."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
  return [float(scorer.score(ref, hyp)["rougeL"].fmeasure)
          for hyp, ref in zip(hypotheses, references, strict=True)]


def bootstrap_median(scores: Sequence[float], seed: int = JURY_SEED,
                     skip_resamplings: int = _ROUGE_TYPES_BEFORE_L) -> float:
  """Median of BOOTSTRAP_SAMPLES bootstrap means, drawn as rouge-score's aggregator draws.

  A private RandomState replays the global numpy stream jury's aggregation
  sees after `np.random.seed(seed)`, so neither the caller's numpy state
  matters nor is it touched. The first `skip_resamplings` score types'
  resamplings are drawn and discarded: they only advance the stream.

  Args:
    scores: `[num_pairs]` per-pair scores.
    seed: the numpy seed in force when the aggregation starts.
    skip_resamplings: how many score types the aggregator resamples first.
  """
  rng = np.random.RandomState(seed)
  n = len(scores)
  for _ in range(skip_resamplings * BOOTSTRAP_SAMPLES):
    rng.choice(np.arange(n), size=n)
  # [num_pairs, 1], as rouge-score stacks single-value scores, so the means round alike.
  matrix = np.vstack(tuple(scores))
  means = np.zeros((BOOTSTRAP_SAMPLES, 1))
  for i in range(BOOTSTRAP_SAMPLES):
    means[i, :] = np.mean(matrix[rng.choice(np.arange(n), size=n), :], axis=0)
  return float(np.percentile(means, 50.0, axis=0)[0])


def rouge_l(hypotheses: Sequence[str], references: Sequence[str],
            aggregate: str = "bootstrap") -> float:
  """Corpus ROUGE-L: jury's bootstrap median ("bootstrap") or the plain mean ("mean").

  Raises:
    errors.ConfigError: unknown `aggregate` (one line).
  """
  if aggregate not in ROUGE_AGGREGATES:
    raise errors.ConfigError(
        f"eval.rouge_aggregate={aggregate!r}; expected one of {ROUGE_AGGREGATES}")
  scores = rouge_l_f1(hypotheses, references)
  if aggregate == "mean":
    return sum(scores) / len(scores)
  return bootstrap_median(scores)


def meteor_per_pair(hyp_tokens: Sequence[Sequence[str]], ref_tokens: Sequence[Sequence[str]],
                    wordnet: Any) -> list[float]:
  """`[num_pairs]` nltk `single_meteor_score` (alpha 0.9, beta 3, gamma 0.5).

  Args:
    hyp_tokens: `[num_pairs]` token lists (jury tokens in the reference).
    ref_tokens: `[num_pairs]` token lists.
    wordnet: a loaded nltk WordNet reader (`wordnet.load_wordnet`).
  """
  from nltk.translate.meteor_score import single_meteor_score  # pylint: disable=g-import-not-at-top
  return [single_meteor_score(ref, hyp, alpha=0.9, beta=3, gamma=0.5, wordnet=wordnet)
          for hyp, ref in zip(hyp_tokens, ref_tokens, strict=True)]


def meteor_mean(hyp_tokens: Sequence[Sequence[str]], ref_tokens: Sequence[Sequence[str]],
                wordnet: Any) -> float:
  """Mean of `meteor_per_pair`."""
  scores = meteor_per_pair(hyp_tokens, ref_tokens, wordnet)
  return sum(scores) / len(scores)


def selection_score(bleus: Sequence[float], rouge_l: float, meteor: float | None) -> float:
  """(B1+B2+B3+B4)/8 + METEOR/4 + ROUGE-L/4; meteor=None drops its term."""
  return sum(bleus) / 8 + rouge_l / 4 + (meteor / 4 if meteor is not None else 0.0)


def reference_scores(hypotheses: Sequence[str], references: Sequence[str],
                     wordnet: Any = None, rouge_aggregate: str = "bootstrap") -> dict[str, float]:
  """The official code's metrics for `[num_pairs]` hypothesis/reference strings.

  Args:
    hypotheses: `[num_pairs]` generated reports.
    references: `[num_pairs]` ground-truth reports.
    wordnet: loaded nltk WordNet reader; None skips METEOR, and then `score`
      lacks its METEOR/4 term (the caller must flag that).
    rouge_aggregate: "bootstrap" (jury's value) or "mean" (see `rouge_l`).

  Returns:
    `bleu1`..`bleu4`, `rougeL`, `score`, and `meteor` when WordNet is given.
  """
  check_pairs(hypotheses, references)
  hyp_tokens = [jury_tokenize(h) for h in hypotheses]
  ref_tokens = [jury_tokenize(r) for r in references]
  bleus = corpus_bleu(hyp_tokens, ref_tokens, max_order=4)
  out = {f"bleu{n}": b for n, b in enumerate(bleus, start=1)}
  out["rougeL"] = rouge_l(hypotheses, references, rouge_aggregate)
  meteor = None
  if wordnet is not None:
    meteor = out["meteor"] = meteor_mean(hyp_tokens, ref_tokens, wordnet)
  out["score"] = selection_score(bleus, out["rougeL"], meteor)
  return out
