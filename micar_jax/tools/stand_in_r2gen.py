"""A small R2Gen-format folder with drawn stand-in X-rays, from a real annotation.json.

  python -m micar_jax.tools.stand_in_r2gen --annotation=annotation.json --out=RAW \
      [--per_split=64,16,16] [--size=256]

Real IU X-ray images come from Open-i under their own terms; the report texts
are often at hand without them (R2Gen's annotation.json is in several public
repositories). This writes RAW/annotation.json with the first --per_split
records of each split (their reports, ids and image paths unchanged) and draws
one grey PNG per listed image path: a frontal-like view (two lung fields and a
heart shadow) for the first path of a record, a lateral-like view for the
others. The heart shadow is wider when the report speaks of an enlarged heart
or cardiomegaly, so a model has one real signal to learn; everything else
varies with the record id only. RAW then prepares as the real dataset does:

  python -m micar_jax.data.prepare --dataset=iu_xray --raw_dir=RAW --out_dir=DATA

The pictures are stand-ins for trying the pipeline end to end (two views per
study, predict, explain, serve), not medical images.
"""

import hashlib
import json
import os
import re

import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFilter

from micar_jax import cli, errors
from micar_jax.data.prepare import r2gen

_ANNOTATION = flags.DEFINE_string("annotation", None, "R2Gen annotation.json to take records from.")
_OUT = flags.DEFINE_string("out", None, "Output folder (annotation.json and images/).")
_PER_SPLIT = flags.DEFINE_list("per_split", ["64", "16", "16"], "Records of train,val,test.")
_SIZE = flags.DEFINE_integer("size", 256, "Image side in pixels.")

ENLARGED = re.compile(r"cardiomegaly|heart (?:size )?is (?:mildly |moderately )?enlarged|"
                      r"enlarged (?:heart|cardiac)", re.IGNORECASE)


def _rng(record_id: str, view: int) -> np.random.Generator:
  digest = hashlib.sha256(f"{record_id}/{view}".encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw(record_id: str, report: str, view: int, size: int) -> Image.Image:
  """One stand-in view: uint8 grey [size, size]; view 0 frontal-like, others lateral-like."""
  rng = _rng(record_id, view)
  img = Image.new("L", (size, size), int(rng.integers(20, 50)))
  pen = ImageDraw.Draw(img)
  s = size / 256
  body = int(rng.integers(150, 190))
  pen.ellipse([30 * s, 20 * s, 226 * s, 250 * s], fill=body)
  lung = int(rng.integers(40, 80))
  heart = 70 if ENLARGED.search(report) else 42
  if view == 0:
    for x0 in (48, 136):
      pen.ellipse([x0 * s, 40 * s, (x0 + 72) * s, 200 * s], fill=lung)
    pen.ellipse([(128 - heart) * s, 120 * s, (128 + heart) * s, 210 * s], fill=body + 30)
  else:
    pen.ellipse([60 * s, 40 * s, 200 * s, 210 * s], fill=lung)
    pen.ellipse([(110 - heart) * s, 120 * s, (110 + heart) * s, 210 * s], fill=body + 20)
  noise = rng.normal(0, 6, (size, size))
  pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(3 * s)), np.float64) + noise
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write(annotation: str, out: str, per_split: tuple[int, int, int], size: int) -> int:
  """Writes out/annotation.json and out/images/...; returns the number of images drawn.

  Raises:
    errors.UserError: unreadable annotation, or an out folder that is not empty.
  """
  if os.path.isdir(out) and os.listdir(out):
    raise errors.UserError(f"{out} is not empty")
  try:
    with open(annotation, encoding="utf-8") as f:
      ann = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f"cannot read {annotation}: {e}") from None
  if not isinstance(ann, dict):
    raise errors.UserError(f"{annotation} is not an R2Gen annotation (an object of split lists)")
  splits = r2gen.split_lists(annotation, ann)
  chosen = {split: records[:n] for (split, records), n in zip(splits.items(), per_split)}
  drawn = 0
  for records in chosen.values():
    for rec in records:
      if not (isinstance(rec, dict) and isinstance(rec.get("image_path"), list)):
        continue  # copied as is: prepare reports it as a malformed row
      for view, rel in enumerate(rec["image_path"]):
        path = os.path.join(out, "images", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        draw(str(rec.get("id", rel)), str(rec.get("report", "")), view, size).save(path)
        drawn += 1
  with open(os.path.join(out, "annotation.json"), "w", encoding="utf-8") as f:
    json.dump(chosen, f)
  return drawn


def main(argv) -> None:
  cli.expect_no_arguments(argv)
  if not _ANNOTATION.value or not _OUT.value:
    raise errors.UserError("--annotation and --out are required")
  try:
    per_split = tuple(int(n) for n in _PER_SPLIT.value)
  except ValueError:
    per_split = ()
  if len(per_split) != 3 or min(per_split) < 1:
    raise errors.UserError(f"--per_split must be three counts TRAIN,VAL,TEST, got {_PER_SPLIT.value}")
  drawn = write(_ANNOTATION.value, _OUT.value, per_split, _SIZE.value)
  print(f"wrote {_OUT.value}/annotation.json and {drawn} stand-in images")


if __name__ == "__main__":
  cli.run(main)
