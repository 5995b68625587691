"""The standard captioning suite: pycocoevalcap 1.2 scorers, one by one.

BLEU-1..4, METEOR 1.5 (Java), ROUGE-L (beta 1.2) and CIDEr-D, as the R2Gen
family reports them: the scorers are called directly on whitespace-split
strings, never through `COCOEvalCap.evaluate` (which runs SPICE, and SPICE
downloads Stanford models). docs/metrics.md §3-§6 explains how these differ from
the reference suite; do not mix the two families in one table.

METEOR runs `java -jar meteor-1.5.jar` through meteor.py (time-limited; a
JVM that dies or stalls is killed and METEOR is skipped with a warning); one
JVM per process is started on first use (5-8 s: JVM plus paraphrase table)
and reused.
"""

import atexit
import logging
import shutil
from typing import Sequence

from micar_jax import errors
from micar_jax.metrics import meteor as meteor_lib
from micar_jax.metrics import reference

_METEOR: meteor_lib.MeteorProcess | None = None
TOKENIZERS = ("whitespace", "jury")


def _close_meteor() -> None:
  """Stops the METEOR JVM while the interpreter is still whole."""
  global _METEOR
  meteor, _METEOR = _METEOR, None
  if meteor is not None:
    meteor.close()


atexit.register(_close_meteor)


def _meteor(hypotheses: Sequence[str], references: Sequence[str], java: str,
            timeout_s: float) -> float:
  """Corpus METEOR 1.5 from the shared JVM (started on first use, dropped when it fails)."""
  global _METEOR
  if _METEOR is None or (_METEOR.java, _METEOR.timeout_s) != (java, timeout_s):
    _close_meteor()
    _METEOR = meteor_lib.MeteorProcess(java, timeout_s)
  try:
    return _METEOR.score(hypotheses, references)[0]
  except meteor_lib.MeteorError:
    _METEOR = None  # score() has already killed it
    raise


def _normalise(text: str, tokenize: str) -> str:
  # Newlines break METEOR's stdin protocol and repeated spaces make empty
  # tokens in Rouge's split(" "), so every string is re-joined on single spaces.
  if tokenize == "jury":
    return " ".join(reference.jury_tokenize(text))
  return " ".join(text.split())


def _scorer_inputs(hypotheses: Sequence[str], references: Sequence[str], tokenize: str
                   ) -> tuple[list[str], list[str], dict[int, list[str]], dict[int, list[str]]]:
  """(hyps, refs, gts, res): normalised strings and the scorers' {pair index: [string]} inputs."""
  hyps = [_normalise(h, tokenize) for h in hypotheses]
  refs = [_normalise(r, tokenize) for r in references]
  return hyps, refs, {i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}


def cider_per_pair(hypotheses: Sequence[str], references: Sequence[str],
                   tokenize: str = "whitespace") -> list[float] | None:
  """`[num_pairs]` CIDEr-D per pair (document frequencies from all pairs); None without pycocoevalcap.

  The mean of these is `coco_scores`'s `cider`.
  """
  reference.check_pairs(hypotheses, references)
  try:
    from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  _, _, gts, res = _scorer_inputs(hypotheses, references, tokenize)
  return [float(s) for s in Cider().compute_score(gts, res)[1]]


def coco_scores(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "whitespace",
                meteor_timeout_s: float = meteor_lib.DEFAULT_TIMEOUT_S
                ) -> tuple[dict[str, float], dict[str, str]]:
  """pycocoevalcap BLEU-1..4, METEOR, ROUGE-L and CIDEr-D over `[num_pairs]` pairs.

  Args:
    hypotheses: `[num_pairs]` generated reports.
    references: `[num_pairs]` ground-truth reports (one per hypothesis).
    tokenize: "whitespace" splits the strings as they are (project reports are
      already lowercased with `.`/`,` as separate tokens); "jury" first applies
      the reference suite's tokeniser, for like-for-like comparisons.
    meteor_timeout_s: the longest METEOR's JVM may take for one reply (the
      first includes its start-up); past it, or when the JVM dies, METEOR is
      skipped with a one-line reason.

  Returns:
    `(values, skipped)`: values has `bleu1`..`bleu4`, `rougeL`, `cider` and
    `meteor` (unless skipped); skipped maps a metric, or "*" for the whole
    suite, to a one-line reason.
  """
  if tokenize not in TOKENIZERS:
    raise errors.ConfigError(f"tokenize={tokenize!r}; expected one of {TOKENIZERS}")
  reference.check_pairs(hypotheses, references)
  try:
    from pycocoevalcap.bleu.bleu import Bleu  # pylint: disable=g-import-not-at-top
    from pycocoevalcap.cider.cider import Cider  # pylint: disable=g-import-not-at-top
    from pycocoevalcap.rouge.rouge import Rouge  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning("coco suite skipped: pycocoevalcap is not installed")
    return {}, {"*": "pycocoevalcap is not installed; coco suite skipped"}

  hyps, refs, gts, res = _scorer_inputs(hypotheses, references, tokenize)
  bleus, _ = Bleu(4).compute_score(gts, res, verbose=0)
  values = {f"bleu{n}": float(b) for n, b in enumerate(bleus, start=1)}
  values["rougeL"] = float(Rouge().compute_score(gts, res)[0])
  values["cider"] = float(Cider().compute_score(gts, res)[0])
  skipped = {}
  java = shutil.which("java")
  if java is None:
    skipped["meteor"] = "java not found on PATH; METEOR 1.5 skipped"
  else:
    try:
      values["meteor"] = _meteor(hyps, refs, java, meteor_timeout_s)
    except (OSError, meteor_lib.MeteorError) as e:
      skipped["meteor"] = f"METEOR 1.5 failed and was skipped ({type(e).__name__}: {str(e)[:80]})"
  for metric, reason in skipped.items():
    logging.warning("coco/%s skipped: %s", metric, reason)
  return values, skipped
