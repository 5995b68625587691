"""Reports for a user's own images: `--mode=predict --images=PATHS|DIR`.

Each call writes a new file, DIR/predictions-<UTC time>.jsonl (an earlier
call's file is never overwritten), one line per image in input order:
{"image": path, "report": text} for a readable image, {"image": path,
"report": null, "skipped": reason} for one that could not be read (the path
as `evaluate.stored_image` stores it; `evaluate.resolve_image` reads it). An image
whose EXIF orientation tag is not the identity also gets "exif_orientation"
(2..8) and a "note" saying whether it was applied (data.apply_exif_orientation,
off by default as in the reference; see micar_jax.data.images). Reports end
at the first `<eos>` (the words the reference keeps after it, and scores with
eval.keep_after_eos, are not part of what a reader sees), so they match
--mode=explain's for the same image and greedy decoding.

With config.data.num_views > 1 the inputs are studies (`predict_inputs.list_studies`:
study folders, a folder of them, or a CSV/JSONL list) and each line is one study
in listing order: {"study": name, "images": [view paths], "report": text}, or
"report": null and "skipped": reason; "exif_orientation" is then the list of
the views' tags.
"""

import json
import os
import time
from typing import Any, Sequence

import ml_collections
from absl import logging

from micar_jax import errors, evaluate
from micar_jax.core import run as run_lib
from micar_jax.data import images as images_lib
from micar_jax.data import predict_inputs
from micar_jax.models import partitioning

# Skipped images named on the console; the file lists them all.
SHOWN_SKIPS = 5


def new_output_path(workdir: str, now: float | None = None) -> str:
  """DIR/predictions-YYYYMMDDTHHMMSSZ.jsonl, with -2, -3, ... if that name exists."""
  stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
  path, n = os.path.join(workdir, f"predictions-{stamp}.jsonl"), 1
  while os.path.exists(path):
    n += 1
    path = os.path.join(workdir, f"predictions-{stamp}-{n}.jsonl")
  return path


def exif_fields(path: str, applied: bool) -> dict[str, int | str]:
  """{"exif_orientation", "note"} for an image with a non-identity EXIF orientation, else {}."""
  orientation = images_lib.exif_orientation(path)
  if orientation == 1:
    return {}
  note = (f"EXIF orientation {orientation} applied (data.apply_exif_orientation=True)" if applied
          else f"EXIF orientation {orientation} not applied, as the reference; "
          "data.apply_exif_orientation=True applies it")
  return {"exif_orientation": orientation, "note": note}


def predict(config: ml_collections.ConfigDict, workdir: str, images: Sequence[str]) -> str:
  """Generates one report per readable image (or study) with the best checkpoint.

  Returns:
    The path of the new predictions file.

  Raises:
    errors.UserError: no image (or study) could be read (nothing is written).
  """
  run = run_lib.Run(config, workdir)
  paths = images[0] if len(images) == 1 else list(images)
  variables = run.best_variables()
  generate_fn = run.generate_fn()
  if run.config.data.num_views > 1:
    return _predict_studies(run, workdir, images, paths, variables, generate_fn)
  records, skipped = {}, []
  # Relative to the run or data folder when inside one (a moved run keeps them), else absolute.
  stored = lambda path: evaluate.stored_image(path, workdir, run.config.data_dir)
  apply_exif = run.config.data.apply_exif_orientation
  with partitioning.use_mesh(run.mesh, run.rules):
    for batch in predict_inputs.predict_batches(run.config, paths, skipped):
      ids = evaluate.to_host(generate_fn(variables, *evaluate.device_images(run.put, batch)))
      for row, path in enumerate(batch["paths"]):
        records[path] = {"image": stored(path), "report": run.tokenizer.decode_clean(ids[row]),
                         **exif_fields(path, apply_exif)}
  _refuse_if_empty(records, skipped, images, "images")
  for path, reason in skipped:
    records[path] = {"image": stored(path), "report": None, "skipped": reason}
  out_path = _write_lines(
      workdir, [records[p] for p in predict_inputs.list_images(paths) if p in records])
  _summarise(run, out_path, records, skipped, "images", "")
  return out_path


def _refuse_if_empty(records: dict[str, Any], skipped: Sequence[tuple[str, str]],
                     images: Sequence[str], unit: str) -> None:
  """Raises errors.UserError (nothing is written) when no image or study could be read."""
  if not records:
    reasons = "; ".join(reason for _, reason in skipped[:SHOWN_SKIPS])
    raise errors.UserError(f"no readable {unit} in {', '.join(images)}"
                           + (f" ({reasons})" if reasons else ""))


def _summarise(run: run_lib.Run, out_path: str, records: dict[str, Any],
               skipped: Sequence[tuple[str, str]], unit: str, label: str) -> None:
  """Logs and (process 0) prints what a predict call wrote: counts, skips, EXIF tags."""
  count = len(records) - len(skipped)
  oriented = sum("exif_orientation" in r for r in records.values())
  logging.info("wrote %d reports, skipped %d %s", count, len(skipped), unit)
  if not run.is_lead:
    return
  print(f"predictions: {out_path} ({count} reports, {len(skipped)} skipped)")
  for name, reason in skipped[:SHOWN_SKIPS]:
    print(f"  skipped {label}{name}: {reason}")
  if len(skipped) > SHOWN_SKIPS:
    print(f"  ... and {len(skipped) - SHOWN_SKIPS} more (listed in the file)")
  if oriented:
    applied = run.config.data.apply_exif_orientation
    print(f"  {oriented} of the {unit} carry an EXIF orientation tag that was "
          + ("applied (data.apply_exif_orientation=True)" if applied else
             "not applied, as the reference (data.apply_exif_orientation=True applies it; "
             "exif_orientation in the file)"))


def _write_lines(workdir: str, records: Sequence[dict[str, Any]]) -> str:
  out_path = new_output_path(workdir)
  with open(out_path + ".tmp", "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")
  os.replace(out_path + ".tmp", out_path)
  return out_path


def _predict_studies(run: run_lib.Run, workdir: str, images: Sequence[str],
                     paths: str | Sequence[str], variables: Any, generate_fn: Any) -> str:
  """`predict` for num_views > 1: one line per listed study."""
  records, skipped = {}, []
  stored = lambda views: evaluate.stored_image(views, workdir, run.config.data_dir)
  apply_exif = run.config.data.apply_exif_orientation
  with partitioning.use_mesh(run.mesh, run.rules):
    for batch in predict_inputs.predict_batches(run.config, paths, skipped):
      ids = evaluate.to_host(generate_fn(variables, *evaluate.device_images(run.put, batch)))
      for row, study in enumerate(batch["studies"]):
        records[study.name] = {"study": study.name, "images": stored(study.views),
                               "report": run.tokenizer.decode_clean(ids[row]),
                               **_study_exif_fields(study.views, apply_exif)}
  _refuse_if_empty(records, skipped, images, "studies")
  studies = predict_inputs.list_studies(paths, run.config.data.num_views)
  for name, reason in skipped:
    views = next(s.views for s in studies if s.name == name)
    records[name] = {"study": name, "images": stored(views), "report": None, "skipped": reason}
  out_path = _write_lines(workdir, [records[s.name] for s in studies if s.name in records])
  _summarise(run, out_path, records, skipped, "studies", "study ")
  return out_path


def _study_exif_fields(views: Sequence[str], applied: bool) -> dict[str, Any]:
  """{"exif_orientation": [per view], "note"} when a view's tag is not the identity, else {}."""
  orientations = [images_lib.exif_orientation(p) for p in views]
  if all(o == 1 for o in orientations):
    return {}
  note = ("EXIF orientations applied (data.apply_exif_orientation=True)" if applied
          else "EXIF orientations not applied, as the reference; "
          "data.apply_exif_orientation=True applies them")
  return {"exif_orientation": orientations, "note": note}
