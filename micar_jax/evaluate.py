"""Evaluation: validation loss, report generation over a split, scores, output files."""

import csv
import json
import os
from typing import Any, Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from micar_jax import errors
from micar_jax.data import tokenizer as tokenizer_lib
from micar_jax.metrics import scores as scores_lib
from micar_jax.metrics import sentence


def to_host(x: jax.Array) -> np.ndarray:
  """Gathers a (possibly multi-host) global array into a numpy array on every host."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


VAL_LOSS_MEANS = ("batch", "token")
# The complete config a run was trained with, in its run folder (`core.run.save_config`).
CONFIG_FILE = "config.json"


def validation_loss(eval_step: Callable, variables: Any, batches: Iterable[dict],
                    put: Callable, mean: str = "batch") -> float:
  """Teacher-forced loss over a split (CE over valid rows' label tokens + weighted aux terms).

  Args:
    mean: "batch": the mean over batches of each batch's loss (its token-mean CE
      plus its aux terms), as the reference logs it; "token": CE averaged over
      all the split's tokens plus the mean aux terms. Batches without a valid
      label token (all padding) count in neither.
  """
  if mean not in VAL_LOSS_MEANS:
    raise errors.ConfigError(f"eval.val_loss_mean={mean!r}; expected one of {VAL_LOSS_MEANS}")
  ce_sum, tokens, aux, batch_losses = 0.0, 0.0, 0.0, []
  for batch in batches:
    out = jax.device_get(eval_step(variables, put(batch)))
    if float(out["tokens"]) == 0:
      continue
    ce_sum += float(out["ce_sum"])
    tokens += float(out["tokens"])
    aux += float(out["aux"])
    batch_losses.append(float(out["ce_sum"]) / float(out["tokens"]) + float(out["aux"]))
  if not batch_losses:
    return 0.0
  if mean == "batch":
    return sum(batch_losses) / len(batch_losses)
  return ce_sum / tokens + aux / len(batch_losses)


def device_images(put: Callable, batch: dict[str, Any]) -> tuple[jax.Array, jax.Array]:
  """(images, valid) of a host batch on the mesh; padding rows (valid=False) never steer decoding.

  Returns:
    images [b', (V,) H, W, 3] and valid [b'] bool, b' >= b after `put`'s padding.
  """
  arrays = put({"images": batch["images"], "valid": batch["valid"]})
  return arrays["images"], arrays["valid"]


def generate_split(generate_fn: Callable, variables: Any, batches: Iterable[dict],
                   rows: Sequence[dict], tokenizer: tokenizer_lib.Tokenizer, put: Callable,
                   keep_after_eos: bool = True) -> list[dict[str, Any]]:
  """Generates a report for every valid row, in split order.

  Returns:
    One dict per example: index, image, report (raw), reference (label-derived,
    truncated, `<unk>` kept, as the reference scores it), generated (as scored:
    decoded per keep_after_eos) and generated_clean (cut at the first `<eos>`,
    what predict and explain show).
  """
  decode = tokenizer.decode if keep_after_eos else tokenizer.decode_clean
  out: dict[int, dict[str, Any]] = {}
  for batch in batches:
    ids = to_host(generate_fn(variables, *device_images(put, batch)))
    labels = batch["labels"]
    for row, (index, valid) in enumerate(zip(batch["index"], batch["valid"])):
      if not valid:
        continue
      record = rows[int(index)]
      out[int(index)] = {"index": int(index), "image": record["image"],
                         "report": record["report"], "reference": tokenizer.decode(labels[row]),
                         "generated": decode(ids[row]),
                         "generated_clean": tokenizer.decode_clean(ids[row])}
  return [out[i] for i in sorted(out)]


def score(examples: Sequence[dict[str, Any]], config: ml_collections.ConfigDict,
          suites: Sequence[str], against: str = "reference") -> scores_lib.Scores:
  """Scores generated reports against label-derived references (or "report": raw)."""
  return scores_lib.compute_scores(
      [e["generated"] for e in examples], [e[against] for e in examples], suites=tuple(suites),
      **scores_lib.options_from(config.eval))


def scores_table(scores: scores_lib.Scores, title: str) -> str:
  """`title`, then one `  <metric>  <value>` row per metric (skipped ones say why), for the console.

  Values have 4 decimals; the JSON outputs keep full precision.
  """
  keys = list(scores.values) + [k for k in scores.skipped if k not in scores.values]
  width = max((len(k) for k in keys), default=0)
  rows = [title]
  for key in keys:
    if key in scores.values:
      value = f"{scores.values[key]:.4f}"
      if key in scores.partial:
        value += f" (partial: {scores.partial[key]})"
    else:
      value = f"skipped: {scores.skipped[key]}"
    rows.append(f"  {key:<{width}}  {value}")
  return "\n".join(rows)


def stored_image(image: str | Sequence[str], run_dir: str, data_dir: str = ""
                 ) -> str | list[str]:
  """An image path (or a view list) as run outputs store it, so a moved folder keeps its images.

  Relative to the run folder when the image is inside it (the synthetic data
  in <workdir>/data), else relative to the data folder when inside that, else
  absolute (a user's own images for predict and explain). `resolve_image`
  reads it back.
  """
  if not isinstance(image, str):
    return [stored_image(p, run_dir, data_dir) for p in image]
  path = os.path.abspath(image)
  for base in (run_dir, data_dir):
    if base:
      base = os.path.abspath(base)
      if os.path.commonpath([path, base]) == base:
        return os.path.relpath(path, base)
  return path


def saved_data_dir(run_dir: str) -> str:
  """The data folder of the run in `run_dir` as its config.json records it ("" if unknown)."""
  try:
    with open(os.path.join(run_dir, CONFIG_FILE), encoding="utf-8") as f:
      return json.load(f).get("data_dir") or ""
  except (OSError, ValueError, AttributeError):
    return ""


def resolve_image(stored: str | Sequence[str], run_dir: str, data_dir: str | None = None
                  ) -> str | list[str]:
  """The file a stored image path (`stored_image`) names today.

  A relative path is looked up in the run folder first, then in `data_dir`
  (by default the one the run's config.json records; a relative data_dir is
  taken from the working directory, as the run took it).

  Args:
    stored: `image` of test/examples.jsonl, test/generated_reports.csv (a
      multi-view row's paths split on ";"), predictions-*.jsonl or explain/*.json.
    run_dir: the run folder those files are in (wherever it is now).
    data_dir: the dataset folder; None reads it from run_dir/config.json.

  Returns:
    The path to open: absolute stays as stored; a relative one joined to the
    run folder when it exists there, else to the data folder (else the run
    folder's join, so an error names a sensible path).
  """
  if not isinstance(stored, str):
    return [resolve_image(p, run_dir, data_dir) for p in stored]
  if os.path.isabs(stored):
    return stored
  in_run = os.path.join(run_dir, stored)
  if os.path.exists(in_run):
    return in_run
  data_dir = saved_data_dir(run_dir) if data_dir is None else data_dir
  in_data = os.path.join(data_dir, stored) if data_dir else ""
  return in_data if in_data and os.path.exists(in_data) else in_run


def write_examples_jsonl(path: str, examples: Sequence[dict[str, Any]],
                         config: ml_collections.ConfigDict, suites: Sequence[str]) -> None:
  """Writes one JSON line per example: index, image, generated, reference, scores.

  generated and reference are shown as `write_reports_csv` shows them (cut at
  the first `<eos>`; as written in the dataset); `scores` are the example's
  sentence-level scores (`metrics.sentence`) of the texts the corpus scores
  compare. `--mode=serve` lists them.
  """
  per_example = sentence.sentence_scores(
      [e["generated"] for e in examples], [e["reference"] for e in examples], tuple(suites),
      **scores_lib.options_from(config.eval))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for e, scores in zip(examples, per_example):
      record = {"index": e["index"], "image": e["image"], "generated": e["generated_clean"],
                "reference": e["report"], "scores": scores}
      f.write(json.dumps(record) + "\n")
  os.replace(path + ".tmp", path)


REPORT_COLUMNS = ("image", "reference", "generated", "scored_reference", "scored_generated")


def write_reports_csv(path: str, examples: Sequence[dict[str, Any]]) -> None:
  """One row per example, REPORT_COLUMNS.

  reference is the report as written in the dataset and generated the report cut
  at its first `<eos>` (as predict shows it); scored_reference (label-derived:
  truncated, `<unk>` for unknown words) and scored_generated (decoded per
  eval.keep_after_eos) are the texts the scores compare.
  """
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(REPORT_COLUMNS)
    for e in examples:
      image = e["image"] if isinstance(e["image"], str) else ";".join(e["image"])
      writer.writerow([image, e["report"], e["generated_clean"], e["reference"], e["generated"]])


def write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
