"""Reports for a user's own images: `--mode=predict --images=PATHS|DIR`.

Each call writes a new file, DIR/predictions-<UTC time>.jsonl (an earlier
call's file is never overwritten), one line per image in input order:
{"image": path, "report": text} for a readable image, {"image": path,
"report": null, "skipped": reason} for one that could not be read. Reports end
at the first `<eos>` (the words the reference keeps after it, and scores with
eval.keep_after_eos, are not part of what a reader sees), so they match
--mode=explain's for the same image and greedy decoding.
"""

import json
import os
import time
from typing import Sequence

import ml_collections
from absl import logging

from micar_jax import errors, evaluate
from micar_jax.core import run as run_lib
from micar_jax.data import input_pipeline
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


def predict(config: ml_collections.ConfigDict, workdir: str, images: Sequence[str]) -> str:
  """Generates one report per readable image with the best checkpoint.

  Returns:
    The path of the new predictions file.

  Raises:
    errors.UserError: no image could be read (nothing is written).
  """
  run = run_lib.Run(config, workdir)
  paths = images[0] if len(images) == 1 else list(images)
  variables = run.best_variables()
  generate_fn = run.generate_fn()
  records, skipped = {}, []
  with partitioning.use_mesh(run.mesh, run.rules):
    for batch in input_pipeline.predict_batches(run.config, paths, skipped):
      ids = evaluate.to_host(generate_fn(variables, *evaluate.device_images(run.put, batch)))
      for row, path in enumerate(batch["paths"]):
        records[path] = {"image": path, "report": run.tokenizer.decode_clean(ids[row])}
  if not records:
    reasons = "; ".join(reason for _, reason in skipped[:SHOWN_SKIPS])
    raise errors.UserError(f"no readable images in {', '.join(images)}"
                           + (f" ({reasons})" if reasons else ""))
  for path, reason in skipped:
    records[path] = {"image": path, "report": None, "skipped": reason}
  order = input_pipeline.list_images(paths)
  out_path = new_output_path(workdir)
  with open(out_path + ".tmp", "w", encoding="utf-8") as f:
    for path in order:
      if path in records:
        f.write(json.dumps(records[path]) + "\n")
  os.replace(out_path + ".tmp", out_path)
  count = len(records) - len(skipped)
  logging.info("wrote %d reports, skipped %d images", count, len(skipped))
  if run.is_lead:
    print(f"predictions: {out_path} ({count} reports, {len(skipped)} skipped)")
    for path, reason in skipped[:SHOWN_SKIPS]:
      print(f"  skipped {path}: {reason}")
    if len(skipped) > SHOWN_SKIPS:
      print(f"  ... and {len(skipped) - SHOWN_SKIPS} more (listed in the file)")
  return out_path
