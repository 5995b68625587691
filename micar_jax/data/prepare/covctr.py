"""COVCTR (COV-CTR, English reports): `RAW/images/` + `RAW/reports_ZH_EN.csv` (or `reports.csv`).

Reference: every CSV record takes part in an 80/10/10 split (seed 9876); the
English report `reports_En` is the text; duplicate image ids are kept.
"""

import os

from micar_jax import errors
from micar_jax.data.prepare import cleaning, common, split

CSV_NAMES = ("reports_ZH_EN.csv", "reports.csv")
# Columns the reference drops; `findings` is overwritten with `reports_En`.
_DROPPED = ("reports_En", "COVID", "terminologies", "impression", "findings")


def find_csv(raw_dir: str) -> str:
  for name in CSV_NAMES:
    path = os.path.join(raw_dir, name)
    if os.path.isfile(path):
      return path
  others = sorted(f for f in os.listdir(raw_dir) if f.lower().endswith(".csv"))
  found = f"; found {', '.join(others)}" if others else ""
  raise errors.UserError(
      f"{raw_dir}: no {CSV_NAMES[0]} (the complete COV-CTR report table, named exactly so; "
      f"{CSV_NAMES[1]} is also accepted){found}. See docs/datasets.md")


def load(request: common.Request, bad: common.BadRows) -> dict[str, list[common.Example]]:
  """Reads, splits and checks COVCTR. Returns split -> examples in reference order."""
  raw_dir = request.raw_dir
  path = find_csv(raw_dir)
  if not os.path.isdir(os.path.join(raw_dir, "images")):
    raise errors.UserError(f"{raw_dir}: no images/ folder (the COV-CTR CT images, named by image_id)")
  header, records = common.read_csv(path)
  common.require_columns(path, header, ("image_id", "reports_En"))
  # Columns the reference keeps besides image_id/findings: an NA there makes dropna() drop the row.
  extra = [c for c in header if c not in _DROPPED and c != "image_id"]
  rows = []
  for rec in records:
    image_id = rec.fields["image_id"]
    problem = rec.problem or common.dropna_problem(rec.fields, extra)
    if problem is None and common.is_na(image_id):
      problem = "empty image_id"
    image = None if common.is_na(image_id) else os.path.join(raw_dir, "images", image_id)
    rows.append(common.Row(rec.where, image, common.na_to_none(rec.fields["reports_En"]), cleaning.clean_covctr,
                           problem))
  parts = split.three_way_split(len(rows), 0.2, 0.5, seed=9876)
  return common.finish_rows({s: [rows[i] for i in idx] for s, idx in parts.items()}, bad)
