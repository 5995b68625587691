"""PEIR Gross: `RAW/images/` + `RAW/captions.json` (`{image_file: caption}`).

Reference: captions that are JSON null are dropped before the split
(`dropna`); the rest take part in a 70/10/20 split (seed 1234); the text is
the part after the last `:`.
"""

import math
import os

from micar_jax.data.prepare import cleaning, common, split


def load(raw_dir: str, bad: common.BadRows) -> dict[str, list[common.Example]]:
  """Reads, splits and checks PEIR Gross. Returns split -> examples in reference order."""
  path = os.path.join(raw_dir, "captions.json")
  data = common.read_json_object(path, "PEIR Gross captions", "an object {image: caption}")
  rows = []
  for key, caption in data.items():
    where = f"captions.json entry {key!r}"
    if caption is None or (isinstance(caption, float) and math.isnan(caption)):
      bad.add("-", where, "caption is null (the reference drops it before the split)")
      continue
    rows.append(common.Row(where, os.path.join(raw_dir, "images", key), caption,
                           cleaning.clean_pgross))
  parts = split.three_way_split(len(rows), 0.3, 0.66, seed=1234)
  return common.finish_rows({s: [rows[i] for i in idx] for s, idx in parts.items()}, bad)
