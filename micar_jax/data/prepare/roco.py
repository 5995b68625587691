"""ROCO (radiology): Hugging Face parquet shards, or the public release's text files and images.

Two layouts are read (docs/datasets.md):
  * parquet: shards `*{train,validation,test}*.parquet` (columns image_id,
    caption, image) anywhere under RAW, as the reference reads them;
  * release: `<split>/radiology/{captions.txt,dlinks.txt}` (split train,
    validation, test) anywhere under RAW, images in `<split>/radiology/images/`
    named `<PMC id>_<figure file>` as the release's download script saves them.

Reference: the Hugging Face splits are kept, rows in shard order (release:
file order); every image is written as `<image_id>.png`. Shards are read in
sorted file-name order. Images go to OUT/images/ once: PNG bytes are copied
verbatim, other formats are decoded and saved as PNG (pixel-identical, as the
reference's PIL save).
"""

import concurrent.futures
import hashlib
import io
import math
import os

from PIL import Image

from micar_jax import errors
from micar_jax.data.prepare import cleaning, common

SHARD_SPLITS = (("train", "train"), ("validation", "val"), ("test", "test"))
RELEASE_FILES = ("captions.txt", "dlinks.txt")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BATCH = 256


def find_shards(raw_dir: str) -> dict[str, list[str]]:
  """Split -> parquet shard paths whose file name holds the HF split name, sorted by file name."""
  found = []
  for dirpath, _, filenames in os.walk(raw_dir):
    found += [os.path.join(dirpath, f) for f in filenames if f.endswith(".parquet")]
  found.sort(key=lambda p: (os.path.basename(p), p))
  return {ours: [p for p in found if hf in os.path.basename(p)] for hf, ours in SHARD_SPLITS}


def find_release(raw_dir: str) -> dict[str, list[str]]:
  """Split -> release folders `<split>/radiology` (holding captions.txt) under RAW."""
  found = {ours: [] for _, ours in SHARD_SPLITS}
  ours_of = dict(SHARD_SPLITS)
  for dirpath, _, filenames in os.walk(raw_dir):
    parent = os.path.basename(os.path.dirname(dirpath))
    if (os.path.basename(dirpath) == "radiology" and parent in ours_of
        and RELEASE_FILES[0] in filenames):
      found[ours_of[parent]].append(dirpath)
  return {split: sorted(dirs) for split, dirs in found.items()}


def _release_images(folder: str) -> dict[str, str]:
  """ROCO id -> image path, from dlinks.txt (`id<TAB>wget ... <PMC id>.tar.gz ...<TAB>figure`)."""
  path = os.path.join(folder, RELEASE_FILES[1])
  if not os.path.isfile(path):
    raise errors.UserError(f"{path} not found (it names each ROCO image file)")
  out = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      parts = line.rstrip("\n").split("\t")
      words = parts[1].split() if len(parts) >= 3 else []
      archive = next((w for w in words if w.endswith(".tar.gz")), None)
      if archive:
        pmc_id = os.path.basename(archive)[:-len(".tar.gz")]
        out[parts[0]] = os.path.join(folder, "images", f"{pmc_id}_{parts[-1].strip()}")
  return out


def _read_release(folder: str):
  """Yields (where, record, problem) of one release folder's captions.txt, in file order.

  The record has image_id and caption as the parquet does, and the image's file path.
  """
  images = _release_images(folder)
  path = os.path.join(folder, RELEASE_FILES[0])
  rel = os.path.relpath(path, os.path.dirname(os.path.dirname(folder)))
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      image_id, tab, caption = line.rstrip("\n").partition("\t")
      problem = None if tab else "malformed line: no tab between ROCO id and caption"
      yield (f"{rel} line {number}",
             {"image_id": image_id, "caption": caption, "file": images.get(image_id)}, problem)


def _write_file_png(path: str | None, dest: str) -> str | None:
  """write_png of an image file's bytes; returns why it cannot, or None."""
  if path is None:
    return "no dlinks.txt entry for this ROCO id"
  if not os.path.isfile(path):
    return f"missing image {path}"
  with open(path, "rb") as f:
    return write_png(f.read(), dest)


def write_png(data: object, dest: str) -> str | None:
  """Writes encoded image bytes to `dest` as PNG; returns why it cannot, or None."""
  if not isinstance(data, bytes) or not data:
    return "no image bytes"
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()
      if data.startswith(_PNG_SIGNATURE):
        with open(dest, "wb") as f:
          f.write(data)
      else:
        img.save(dest, format="PNG")
  except common.IMAGE_ERRORS as e:
    if os.path.exists(dest):
      os.remove(dest)
    return f"corrupt image bytes ({type(e).__name__}: {e})"
  return None


def _is_null(value: object) -> bool:
  return value is None or (isinstance(value, float) and math.isnan(value)) or common.is_na(value)


def _read_shard(path: str):
  """Yields (where, record dict, None) of one shard, batch by batch."""
  import pyarrow.parquet as pq  # Only this dataset needs pyarrow.
  try:
    shard = pq.ParquetFile(path)
    names = shard.schema_arrow.names
    missing = [c for c in ("image_id", "caption", "image") if c not in names]
    if missing:
      raise errors.UserError(f"{path}: missing column(s) {missing}; found {names}")
    number = 0
    for batch in shard.iter_batches(batch_size=_BATCH):
      for record in batch.to_pylist():
        number += 1
        yield f"{os.path.basename(path)} row {number}", record, None
  except OSError as e:
    raise errors.UserError(f"{path}: unreadable parquet ({e})") from None


def _records(raw_dir: str) -> dict[str, list]:
  """Split -> record iterators of the parquet layout, else of the release layout."""
  shards = find_shards(raw_dir)
  if any(shards.values()):
    return {split: [_read_shard(p) for p in paths] for split, paths in shards.items()}
  release = find_release(raw_dir)
  if any(release.values()):
    return {split: [_read_release(d) for d in dirs] for split, dirs in release.items()}
  raise errors.UserError(
      f"{raw_dir}: no ROCO data: neither *train*/*validation*/*test* .parquet shards nor "
      "<split>/radiology/captions.txt of the release (see docs/datasets.md)")


def load(request: common.Request, bad: common.BadRows) -> dict[str, list[common.Example]]:
  """Reads ROCO, writes its images to stage_dir/images/ and checks the rows.

  Args:
    request: raw_dir holds the parquet shards or the release folders (searched
      recursively); images are written under stage_dir and named in the jsonl
      under final_dir.
    bad: where left-out rows are reported.

  Returns:
    split -> examples in reference order.
  """
  raw_dir, stage_dir, final_dir = request.raw_dir, request.stage_dir, request.final_dir
  os.makedirs(os.path.join(stage_dir, "images"), exist_ok=True)
  written: dict[str, str] = {}  # image_id -> identity (bytes sha256 or file path) written for it
  rows_by_split, image_problems = {}, {}
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for split, sources in _records(raw_dir).items():
      rows, jobs = [], {}
      for source in sources:
        for where, record, problem in source:
          image_id = record["image_id"]
          if "file" in record:
            data, identity, write = record["file"], record["file"] or "", _write_file_png
          else:
            image = record["image"]
            data = image.get("bytes") if isinstance(image, dict) else None
            identity = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else ""
            write = write_png
          extra = [k for k in record if k not in ("image_id", "caption", "image", "file")]
          problem = problem or next((f"empty field {k!r} (the reference's dropna() removes the row)"
                                     for k in extra if _is_null(record[k])), None)
          final = None
          if not isinstance(image_id, str) or not image_id or os.sep in image_id or image_id in (".", ".."):
            problem = problem or f"unusable image_id {image_id!r}"
          else:
            final = os.path.join(final_dir, "images", image_id + ".png")
            if image_id not in written:
              written[image_id] = identity
              jobs[final] = pool.submit(write, data,
                                        os.path.join(stage_dir, "images", image_id + ".png"))
            elif written[image_id] != identity:
              problem = problem or f"different image for an image_id already written: {image_id!r}"
          rows.append(common.Row(where, final, record["caption"], cleaning.clean_roco, problem))
      image_problems.update({p: job.result() for p, job in jobs.items()})
      rows_by_split[split] = rows
  return common.finish_rows(rows_by_split, bad, image_problems)
