"""One entry point for all caption metric suites.

`SUITES` is the table of suites: name -> the keys it reports and its scoring
function, whose keyword-only arguments are the options it takes (each the
`config.eval` setting of that name; `options_from` reads them). The suites and
their keys (each number names its implementation, docs/metrics.md §1):
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
import inspect
import logging
import os
from typing import Any, Callable, Mapping, Sequence

from micar_jax import errors
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


def _reference_suite(hypotheses: Sequence[str], references: Sequence[str], *,
                     wordnet_dir: str | os.PathLike | None = None,
                     rouge_aggregate: str = "bootstrap") -> Scores:
  skipped, partial = {}, {}
  wn, reason = wordnet.load_wordnet(wordnet_dir)
  if wn is None:
    skipped["ref/meteor"] = reason
    partial["ref/score"] = "METEOR/4 term missing (ref/meteor skipped)"
    logging.warning("ref/meteor skipped: %s", reason)
  values = {f"ref/{k}": v for k, v in reference.reference_scores(
      hypotheses, references, wn, rouge_aggregate).items()}
  return Scores(values, skipped, partial)


def _coco_suite(hypotheses: Sequence[str], references: Sequence[str], *,
                coco_tokenize: str = "whitespace",
                meteor_timeout_s: float = coco.meteor_lib.DEFAULT_TIMEOUT_S) -> Scores:
  got, missed = coco.coco_scores(hypotheses, references, coco_tokenize, meteor_timeout_s)
  return Scores({f"coco/{k}": v for k, v in got.items()},
                {f"coco/{k}": v for k, v in missed.items()}, {})


def _ratescore_suite(hypotheses: Sequence[str], references: Sequence[str], *,
                     ratescore_dir: str | os.PathLike | None = None) -> Scores:
  got, missed = ratescore.ratescore_scores(hypotheses, references, ratescore_dir)
  skipped = {}
  for reason in missed.values():
    skipped.update({"rs/mean": reason, "rs/std": reason})
    logging.warning("ratescore skipped: %s", reason)
  return Scores({f"rs/{k}": v for k, v in got.items()}, skipped, {})


@dataclasses.dataclass(frozen=True)
class Suite:
  """A metric suite: the keys it can report and the function that scores pairs.

  `fn(hypotheses, references, **options)` declares its options as keyword-only
  arguments; each is the `config.eval` setting of the same name.
  """
  keys: tuple[str, ...]
  fn: Callable[..., Scores]

  @property
  def options(self) -> tuple[str, ...]:
    return keyword_options(self.fn)


# The caption metrics both the reference and the coco suite report.
_CAPTION = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL")
# Suite name -> Suite, in the order their values are reported.
SUITES = {
    "reference": Suite(tuple(f"ref/{k}" for k in _CAPTION + ("score",)), _reference_suite),
    "coco": Suite(tuple(f"coco/{k}" for k in _CAPTION + ("cider",)), _coco_suite),
    "ratescore": Suite(("rs/mean", "rs/std"), _ratescore_suite),
}


def check_selection(suite: str, key: str) -> None:
  """Raises a one-line ConfigError unless `suite` is a suite that reports `key`."""
  if suite not in SUITES:
    raise errors.ConfigError(f"train.select_suite={suite!r} is not a metric suite; expected "
                             f"one of {tuple(SUITES)}")
  if key not in SUITES[suite].keys:
    raise errors.ConfigError(f"train.select_key={key!r} is not reported by suite {suite!r}; "
                             f"expected one of {SUITES[suite].keys}")


def keyword_options(fn: Callable[..., object]) -> tuple[str, ...]:
  """The names of `fn`'s keyword-only arguments: the options it takes."""
  return tuple(p.name for p in inspect.signature(fn).parameters.values()
               if p.kind is inspect.Parameter.KEYWORD_ONLY)


def option_names() -> tuple[str, ...]:
  """Every option some suite takes, in suite order."""
  return tuple(dict.fromkeys(name for suite in SUITES.values() for name in suite.options))


def options_from(eval_config: Mapping[str, Any]) -> dict[str, Any]:
  """The suites' options from `config.eval`, by name (the one way a run passes them)."""
  return {name: eval_config[name] for name in option_names()}


def pass_options(fn: Callable[..., object], options: Mapping[str, Any]) -> dict[str, Any]:
  """The part of `options` that `fn` takes; an option no suite takes is a TypeError."""
  unknown = sorted(set(options) - set(option_names()))
  if unknown:
    raise TypeError(f"unknown metric option(s) {unknown}; expected some of {option_names()}")
  return {name: options[name] for name in keyword_options(fn) if name in options}


def compute_scores(hypotheses: Sequence[str], references: Sequence[str],
                   suites: Sequence[str] = ("reference", "coco"), **options: Any) -> Scores:
  """Scores `[num_pairs]` generated reports against their references.

  Args:
    hypotheses: `[num_pairs]` generated reports.
    references: `[num_pairs]` ground-truth reports, one per hypothesis.
    suites: any of `SUITES`.
    **options: the suites' options by name (`option_names()`, the eval.*
      settings of docs/configuration.md), each passed to the suites that take
      it; an absent one keeps the suite's default.

  Returns:
    A `Scores`.

  Raises:
    errors.ConfigError: unknown suite.
    TypeError: an option no suite takes.
    ValueError: the pairs are empty, unaligned or not strings.
  """
  unknown = [s for s in suites if s not in SUITES]
  if unknown:
    raise errors.ConfigError(f"unknown metric suite(s) {unknown}; expected some of {tuple(SUITES)}")
  reference.check_pairs(hypotheses, references)
  values, skipped, partial = {}, {}, {}
  for name, suite in SUITES.items():
    if name in suites:
      got = suite.fn(hypotheses, references, **pass_options(suite.fn, options))
      values.update(got.values)
      skipped.update(got.skipped)
      partial.update(got.partial)
  return Scores(values, skipped, partial)
