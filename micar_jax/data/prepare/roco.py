"""ROCO (radiology, Hugging Face parquet): shards `*{train,validation,test}*.parquet` under RAW.

Reference: the Hugging Face splits are kept, rows in shard order; every image
is written as `<image_id>.png`. Shards are read in sorted file-name order.
Images go to OUT/images/ once: PNG bytes are copied verbatim, other formats
are decoded and saved as PNG (pixel-identical, as the reference's PIL save).
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
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BATCH = 256


def find_shards(raw_dir: str) -> dict[str, list[str]]:
  """Split -> parquet shard paths whose file name holds the HF split name, sorted by file name."""
  found = []
  for dirpath, _, filenames in os.walk(raw_dir):
    found += [os.path.join(dirpath, f) for f in filenames if f.endswith(".parquet")]
  found.sort(key=lambda p: (os.path.basename(p), p))
  shards = {ours: [p for p in found if hf in os.path.basename(p)] for hf, ours in SHARD_SPLITS}
  if not any(shards.values()):
    raise errors.UserError(f"{raw_dir}: no *train*/*validation*/*test* .parquet shards (ROCO)")
  return shards


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
  """Yields (row number, record dict) of one shard, batch by batch."""
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
        yield number, record
  except OSError as e:
    raise errors.UserError(f"{path}: unreadable parquet ({e})") from None


def load(raw_dir: str, bad: common.BadRows, stage_dir: str,
         final_dir: str) -> dict[str, list[common.Example]]:
  """Reads ROCO, writes its images to stage_dir/images/ and checks the rows.

  Args:
    raw_dir: folder holding the parquet shards (searched recursively).
    bad: where left-out rows are reported.
    stage_dir: the temporary output folder being written.
    final_dir: where stage_dir will be renamed to (image paths in the jsonl point there).

  Returns:
    split -> examples in reference order.
  """
  os.makedirs(os.path.join(stage_dir, "images"), exist_ok=True)
  written: dict[str, str] = {}  # image_id -> sha256 of the bytes written for it
  rows_by_split, image_problems = {}, {}
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    for split, shards in find_shards(raw_dir).items():
      rows, jobs = [], {}
      for path in shards:
        for number, record in _read_shard(path):
          where = f"{os.path.basename(path)} row {number}"
          image_id, image = record["image_id"], record["image"]
          data = image.get("bytes") if isinstance(image, dict) else None
          extra = [k for k in record if k not in ("image_id", "caption", "image")]
          problem = next((f"empty field {k!r} (the reference's dropna() removes the row)"
                          for k in extra if _is_null(record[k])), None)
          final = None
          if not isinstance(image_id, str) or not image_id or os.sep in image_id or image_id in (".", ".."):
            problem = problem or f"unusable image_id {image_id!r}"
          else:
            final = os.path.join(final_dir, "images", image_id + ".png")
            digest = hashlib.sha256(data).hexdigest() if isinstance(data, bytes) else ""
            if image_id not in written:
              written[image_id] = digest
              jobs[final] = pool.submit(write_png, data,
                                        os.path.join(stage_dir, "images", image_id + ".png"))
            elif written[image_id] != digest:
              problem = problem or f"image_id {image_id!r} already written with different bytes"
          rows.append(common.Row(where, final, record["caption"], cleaning.clean_roco, problem))
      image_problems.update({p: job.result() for p, job in jobs.items()})
      rows_by_split[split] = rows
  return common.finish_rows(rows_by_split, bad, image_problems)
