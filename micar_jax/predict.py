"""Reports for a user's own images: `--mode=predict --images=PATHS|DIR` -> DIR/predictions.jsonl."""

import json
import os
from typing import Sequence

import ml_collections
from absl import logging

from micar_jax import errors, evaluate, sharding
from micar_jax import run as run_lib
from micar_jax.data import input_pipeline


def predict(config: ml_collections.ConfigDict, workdir: str, images: Sequence[str]) -> str:
  """Generates one report per readable image with the best checkpoint.

  Returns:
    The path of predictions.jsonl ({"image": path, "report": text} per line).
  """
  run = run_lib.Run(config, workdir)
  paths = images[0] if len(images) == 1 else list(images)
  variables = run.best_variables()
  generate_fn = run.generate_fn()
  decode = run.tokenizer.decode if run.config.eval.keep_after_eos else run.tokenizer.decode_clean
  out_path = os.path.join(workdir, "predictions.jsonl")
  count = 0
  with open(out_path + ".tmp", "w", encoding="utf-8") as f, sharding.use_mesh(run.mesh, run.rules):
    for batch in input_pipeline.predict_batches(run.config, paths):
      ids = evaluate.to_host(generate_fn(variables, *evaluate.device_images(run.put, batch)))
      for row, path in enumerate(batch["paths"]):
        f.write(json.dumps({"image": path, "report": decode(ids[row])}) + "\n")
        count += 1
  if count == 0:
    os.remove(out_path + ".tmp")
    raise errors.UserError(f"no readable images in {', '.join(images)}")
  os.replace(out_path + ".tmp", out_path)
  logging.info("wrote %d reports", count)
  print(f"predictions: {out_path} ({count} reports)")
  return out_path
