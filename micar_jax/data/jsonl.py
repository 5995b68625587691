"""A prepared dataset folder: `DIR/{train,val,test}.jsonl`, read as rows.

`python -m micar_jax.data.prepare` writes the folder; each line is
`{"image": <path or list of V paths, absolute or relative to DIR>, "report": str}`.
Both the jsonl source of `micar_jax.data.sources` and the TFDS builder read it here.
Writers stage the folder in `make_stage_dir` and rename it into place, so a
folder that exists is complete.
"""

import json
import os
import tempfile
from typing import Any

from absl import logging

from micar_jax import errors
from micar_jax.data import registry


class MissingDataError(errors.UserError, FileNotFoundError):
  """A prepared dataset (a split file here, or a TFDS build) that does not exist."""


def make_stage_dir(out_dir: str) -> str:
  """A new empty sibling of `out_dir` to write in and then rename to `out_dir`.

  mkdtemp creates it drwx------; it gets the mode `mkdir` would give
  (0o777 minus the umask) so the renamed folder is as readable as any other.
  """
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(stage, 0o777 & ~umask)
  return stage


def _missing(data_dir: str, split: str) -> MissingDataError:
  return MissingDataError(
      f"{os.path.join(data_dir, split + '.jsonl')} not found; create the dataset with "
      f"`python -m micar_jax.data.prepare --help` (it writes {data_dir}/{{train,val,test}}.jsonl)")


def _resolve(image: Any, data_dir: str) -> str | list[str]:
  if isinstance(image, str):
    return os.path.join(data_dir, image)  # Absolute paths pass through unchanged.
  if isinstance(image, list) and image and all(isinstance(p, str) for p in image):
    return [os.path.join(data_dir, p) for p in image]
  raise ValueError(f"'image' must be a path or a list of paths, got {image!r}")


def read_split(data_dir: str | os.PathLike, split: str) -> list[dict[str, Any]]:
  """Reads DIR/<split>.jsonl in file order, skipping unusable rows.

  A row whose image file is missing, or a malformed line, is skipped and
  counted; one warning line reports the count.

  Returns:
    rows `{"image": str | list[str], "report": str}`; image paths are absolute.

  Raises:
    MissingDataError: the split file does not exist.
  """
  data_dir = os.path.abspath(os.fspath(data_dir))
  if split not in registry.SPLITS:
    raise ValueError(f"split must be one of {registry.SPLITS}, got {split!r}")
  path = os.path.join(data_dir, split + ".jsonl")
  if not os.path.exists(path):
    raise _missing(data_dir, split)
  rows, skipped, first_problem = [], 0, ""
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
        image = _resolve(obj["image"], data_dir)
        report = obj["report"]
        if not isinstance(report, str):
          raise ValueError(f"'report' must be a string, got {report!r}")
        paths = image if isinstance(image, list) else [image]
        absent = [p for p in paths if not os.path.isfile(p)]
        if absent:
          raise ValueError(f"missing image {absent[0]}")
      except (ValueError, KeyError, TypeError) as e:
        skipped += 1
        first_problem = first_problem or f"line {line_no}: {type(e).__name__}: {e}"
        continue
      rows.append({"image": image, "report": report})
  if skipped:
    logging.warning("%s: skipped %d of %d rows (first: %s)", path, skipped,
                    skipped + len(rows), first_problem)
  return rows
