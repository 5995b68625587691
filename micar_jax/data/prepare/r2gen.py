"""IU X-ray and MIMIC-CXR in R2Gen's layout: `RAW/annotation.json` + `RAW/images/`.

R2Gen's own train/val/test lists are kept in file order. An example's images
are the first `num_views` (micar_jax.data.registry) entries of its
`image_path`. Reports are cleaned with R2Gen's cleaner of each dataset.
"""

import os

from micar_jax import errors
from micar_jax.data.prepare import cleaning, common

_R2GEN_KEYS = {"train": "train", "val": "val", "test": "test"}
_CLEANERS = {"iu_xray": cleaning.clean_iu_xray, "mimic_cxr": cleaning.clean_mimic_cxr}


def split_lists(path: str, ann: dict) -> dict[str, list]:
  """Split -> records; a split whose key is damaged is gathered from records' own "split" field.

  (One public IU X-ray copy has its "test" key replaced by spaces.)
  """
  out = {}
  strays = [r for k, v in ann.items() if k not in _R2GEN_KEYS and isinstance(v, list) for r in v]
  for split, key in _R2GEN_KEYS.items():
    if isinstance(ann.get(key), list):
      out[split] = ann[key]
    else:
      out[split] = [r for r in strays if isinstance(r, dict) and r.get("split") == split]
      if not out[split]:
        raise errors.UserError(f"{path}: no {key!r} list")
  return out


def load(request: common.Request, bad: common.BadRows) -> dict[str, list[common.Example]]:
  """Reads `annotation.json` of "iu_xray" or "mimic_cxr". Returns split -> examples."""
  raw_dir = request.raw_dir
  path = os.path.join(raw_dir, "annotation.json")
  ann = common.read_json_object(path, "R2Gen annotation", "an object with train/val/test lists")
  if not os.path.isdir(os.path.join(raw_dir, "images")):
    raise errors.UserError(f"{raw_dir}: no images/ folder (annotation.json's image_path "
                           "entries are relative to it)")
  views = request.dataset.num_views
  clean = _CLEANERS[request.dataset.name]
  rows_by_split = {}
  for split, records in split_lists(path, ann).items():
    rows = []
    for i, rec in enumerate(records):
      where = f"annotation.json {split}[{i}]"
      paths = rec.get("image_path") if isinstance(rec, dict) else None
      if isinstance(rec, dict) and "id" in rec:
        where += f" (id {rec['id']!r})"
      if (not isinstance(rec, dict) or "report" not in rec or not isinstance(paths, list)
          or len(paths) < views or not all(isinstance(p, str) and p for p in paths[:views])):
        rows.append(common.Row(where, None, None, clean,
                               f"malformed record: needs 'report' and {views} 'image_path' entries"))
        continue
      images = [os.path.join(raw_dir, "images", p) for p in paths[:views]]
      rows.append(common.Row(where, images if views > 1 else images[0], rec["report"], clean))
    rows_by_split[split] = rows
  return common.finish_rows(rows_by_split, bad)
