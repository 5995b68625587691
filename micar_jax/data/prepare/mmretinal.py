"""MM-Retinal v1: `RAW/{CFP,FFA,OCT}/` + `RAW/{CFP,FFA,OCT}_translated_v1.csv`.

Reference: each modality is split 80/10/10 on its own (seed 9876) and the
parts are concatenated CFP, FFA, OCT. `Image_ID` has no extension; the file is
found by walking the modality folder, and rows whose file is not found are
dropped by the reference's `dropna()` (here: left out and reported).
A modality whose CSV is absent is skipped with a notice (the reference needs
all three; each is split on its own, so the others' splits are unchanged).
"""

import os

from micar_jax import errors
from micar_jax.data import registry
from micar_jax.data.prepare import cleaning, common, split

MODALITIES = ("CFP", "FFA", "OCT")
_DROPPED = ("cn_caption", "is_multipic")


def _image_index(folder: str) -> dict[str, str]:
  """Image_ID -> file name extension, as the reference's per-row directory walk finds it.

  The first file in `os.walk` order whose name minus its last 4 characters
  equals the id wins, and the path is always `<folder>/<id><ext>` (also when
  the file sat in a subfolder, which then reads as missing).
  """
  index = {}
  for _, _, filenames in os.walk(folder):
    for filename in filenames:
      index.setdefault(filename[:-4], filename[-4:])
  return index


def csv_path(raw_dir: str, modality: str) -> str:
  return os.path.join(raw_dir, f"{modality}_translated_v1.csv")


def _modality_rows(raw_dir: str, modality: str) -> tuple[list[str], list[common.Row]]:
  """Rows of one modality in file order, and the columns the reference keeps besides id/text."""
  path = csv_path(raw_dir, modality)
  header, records = common.read_csv(path)
  common.require_columns(path, header, ("Image_ID", "en_caption"))
  drop = _DROPPED if modality == "OCT" else _DROPPED[:1]
  extra = [c for c in header if c not in drop and c not in ("Image_ID", "en_caption")]
  folder = os.path.join(raw_dir, modality)
  if not os.path.isdir(folder):
    raise errors.UserError(f"{path} is there but its image folder {folder}/ is not "
                           f"(remove the CSV to leave {modality} out)")
  index = _image_index(folder)
  rows = []
  for rec in records:
    image_id = rec.fields["Image_ID"]
    image, problem = None, rec.problem or common.dropna_problem(rec.fields, extra)
    # The reference skips ids ending in ".png" (or ",jpg", sic) and so never finds them.
    if common.is_na(image_id) or image_id[-4:] in (".png", ",jpg") or image_id not in index:
      problem = problem or f"no image file for Image_ID {image_id!r} in {folder}"
    else:
      image = os.path.join(folder, image_id + index[image_id])
    rows.append(common.Row(rec.where, image, common.na_to_none(rec.fields["en_caption"]), cleaning.clean_mmretinal,
                           problem))
  return extra, rows


def load(request: common.Request, bad: common.BadRows) -> dict[str, list[common.Example]]:
  """Reads, splits and checks MM-Retinal. Returns split -> examples in reference order."""
  present = [m for m in MODALITIES if os.path.isfile(csv_path(request.raw_dir, m))]
  if not present:
    raise errors.UserError(
        f"{request.raw_dir}: none of {', '.join(os.path.basename(csv_path('', m)) for m in MODALITIES)}"
        " (MM-Retinal captions; see docs/datasets.md)")
  for m in MODALITIES:
    if m not in present:
      request.note(f"MM-Retinal: no {os.path.basename(csv_path('', m))}; {m} left out "
                   "(optional modality)")
  per_modality = [(m, *_modality_rows(request.raw_dir, m)) for m in present]
  # After concatenation a column one modality lacks is NA for its rows, so dropna() removes them.
  all_extra = list(dict.fromkeys(c for _, extra, _ in per_modality for c in extra))
  out = {s: [] for s in registry.SPLITS}
  for modality, extra, rows in per_modality:
    for row in rows:
      if row.problem is None:
        missing = [c for c in all_extra if c not in extra]
        if missing:
          row.problem = (f"column absent in this file: {missing[0]!r} "
                         "(the reference's dropna() removes the row)")
    try:
      parts = split.three_way_split(len(rows), 0.2, 0.5, seed=9876)
    except errors.UserError as e:
      raise errors.UserError(f"{csv_path(request.raw_dir, modality)} ({modality}): {e}") from None
    for s, idx in parts.items():
      out[s].extend(rows[i] for i in idx)
  return common.finish_rows(out, bad)
