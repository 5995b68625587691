"""PEIR Gross: `RAW/images/` + `RAW/captions.json` (`{image_file: caption}`).

The file may keep its published name `peir_gross_captions.json`.

Reference: captions that are JSON null are dropped before the split
(`dropna`); the rest take part in a 70/10/20 split (seed 1234); the text is
the part after the last `:`.
"""

import math
import os

from micar_jax.data.prepare import cleaning, common, split

# The reference's name first, then the name it is published under.
CAPTION_FILES = ("captions.json", "peir_gross_captions.json")


def load(request: common.Request, bad: common.BadRows) -> dict[str, list[common.Example]]:
  """Reads, splits and checks PEIR Gross. Returns split -> examples in reference order."""
  raw_dir = request.raw_dir
  path = next((p for p in (os.path.join(raw_dir, n) for n in CAPTION_FILES) if os.path.isfile(p)),
              os.path.join(raw_dir, CAPTION_FILES[0]))
  data = common.read_json_object(
      path, f"PEIR Gross captions; {CAPTION_FILES[1]} is also accepted",
      "an object {image: caption}")
  rows = []
  for key, caption in data.items():
    where = f"{os.path.basename(path)} entry {key!r}"
    if caption is None or (isinstance(caption, float) and math.isnan(caption)):
      bad.add("-", where, "caption is null (the reference drops it before the split)")
      continue
    rows.append(common.Row(where, os.path.join(raw_dir, "images", key), caption,
                           cleaning.clean_pgross))
  parts = split.three_way_split(len(rows), 0.3, 0.66, seed=1234)
  return common.finish_rows({s: [rows[i] for i in idx] for s, idx in parts.items()}, bad)
