"""What `--images` names for prediction: image files, folders, or studies of several views.

Single-view configs take image files or a folder of them (sorted by name);
multi-view configs take studies: a folder holding one study's views (sorted
file-name order), a folder of such study folders, or a CSV/JSONL list of each
study's view files as prepare writes them. `predict_batches` turns either into
batches of the shape `batch_spec.BatchSpec` gives (padding rows invalid).
"""

import csv
import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from micar_jax import errors
from micar_jax.data import batch_spec
from micar_jax.data import images as images_lib

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_images(paths: str | os.PathLike | Sequence[str]) -> list[str]:
  """Expands a directory (sorted image files) or returns the given paths."""
  if isinstance(paths, (str, os.PathLike)):
    paths = os.fspath(paths)
    if not os.path.isdir(paths):
      return [paths]
    return [os.path.join(paths, n) for n in sorted(os.listdir(paths))
            if n.lower().endswith(IMAGE_SUFFIXES)]
  return [os.fspath(p) for p in paths]


STUDY_LISTS = (".csv", ".jsonl")


@dataclasses.dataclass(frozen=True)
class Study:
  """One multi-view study to predict from.

  Attributes:
    name: unique among the listed studies, usable as a file name (explain/<name>.png).
    views: its image files, in view order.
    problem: why it cannot be read, when listing found out already ("" = none).
  """
  name: str
  views: list[str]
  problem: str = ""


def _image_files(folder: str) -> list[str]:
  return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
          if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(folder, n))]


def _count_problem(views: Sequence[str], num_views: int, where: str) -> str:
  if len(views) == num_views:
    return ""
  # A folder of single images handed to a multi-view config is the likely mistake.
  return (f"{where} has {len(views)} image file(s), a study needs config.data.num_views="
          f"{num_views} (loose single images need data.num_views=1)")


def _folder_studies(folder: str, num_views: int) -> list[Study]:
  """A study folder (image files directly inside), else each subfolder as a study."""
  own = _image_files(folder)
  subfolders = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
  if own or not subfolders:
    return [Study(os.path.basename(os.path.normpath(folder)), own,
                  _count_problem(own, num_views, folder))]
  studies = []
  for name in subfolders:
    views = _image_files(os.path.join(folder, name))
    studies.append(Study(name, views, _count_problem(views, num_views, os.path.join(folder, name))))
  return studies


def _list_rows(path: str) -> list[tuple[dict[str, Any] | None, str]]:
  """(row, problem) per line of a JSONL file or data row of a CSV file (header: image[, study])."""
  with open(path, encoding="utf-8", newline="") as f:
    if path.lower().endswith(".jsonl"):
      rows = []
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
          if not isinstance(row, dict):
            raise ValueError("not a JSON object")
          rows.append((row, ""))
        except ValueError as e:
          rows.append((None, f"{path} line {line_no}: {e}"))
      return rows
    reader = csv.DictReader(f)
    if "image" not in (reader.fieldnames or ()):
      raise errors.UserError(f"{path} has no 'image' column (a study's view files, ';' between "
                             "them, as test/generated_reports.csv writes them)")
    return [({**row, "image": [p for p in (row["image"] or "").split(";") if p]}, "")
            for row in reader]


def _listed_studies(path: str, num_views: int) -> list[Study]:
  """Studies of a CSV/JSONL list: each row's `image` (a list of view files) as prepare writes it.

  A relative view path is taken from the list's folder (as a prepared split's
  are from the dataset folder), or from the working directory when it is not
  there. A study is named by the row's `study` (or `id`) field, else by the
  folder holding all its views when no other row uses that folder, else
  <list name>-<row number>.
  """
  base = os.path.dirname(os.path.abspath(path))
  stem = os.path.splitext(os.path.basename(path))[0]

  def resolve(view: str) -> str:
    joined = os.path.join(base, view)
    return joined if os.path.isabs(view) or os.path.exists(joined) else view

  parsed = []
  for number, (row, problem) in enumerate(_list_rows(path), 1):
    views, name = [], ""
    if row is not None:
      image = row.get("image")
      image = [image] if isinstance(image, str) else image
      if isinstance(image, list) and image and all(isinstance(p, str) for p in image):
        views = [resolve(p) for p in image]
        problem = _count_problem(views, num_views, f"{path} row {number}")
      else:
        problem = f"{path} row {number}: 'image' must be a list of paths, got {image!r}"
      name = str(row.get("study") or row.get("id") or "")
    parsed.append((number, name, views, problem))
  folders = [os.path.dirname(v[0]) if v and len({os.path.dirname(p) for p in v}) == 1 else None
             for _, _, v, _ in parsed]
  studies = []
  for (number, name, views, problem), folder in zip(parsed, folders):
    if not name and folder and folders.count(folder) == 1:
      name = os.path.basename(folder)
    studies.append(Study(name or f"{stem}-{number}", views, problem))
  return studies


def list_studies(paths: str | os.PathLike | Sequence[str], num_views: int) -> list[Study]:
  """The studies `--images` names when config.data.num_views > 1, in the given order.

  Each path is a study folder (its image files, in sorted file-name order, are
  the views: name them so that the frontal view sorts first, as in training),
  a folder of study folders (sorted by name), or a CSV/JSONL list of studies
  (`_listed_studies`). A study with the wrong number of views, or a path that
  does not exist, is listed with its problem; names are made unique (-2, -3, ...).

  Raises:
    errors.UserError: an image file named instead of a study, or a CSV without an image column.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  studies = []
  for path in map(os.fspath, paths):
    if os.path.isdir(path):
      studies += _folder_studies(path, num_views)
    elif path.lower().endswith(STUDY_LISTS) and os.path.isfile(path):
      studies += _listed_studies(path, num_views)
    elif path.lower().endswith(IMAGE_SUFFIXES):
      raise errors.UserError(
          f"{path} is one image; with config.data.num_views={num_views} --images names study "
          "folders (one per study, each holding its views), a folder of them, or a CSV/JSONL "
          "list of studies")
    else:
      studies.append(Study(os.path.basename(os.path.normpath(path)) or "study", [],
                           f"{path}: no such study folder or CSV/JSONL list"))
  used, unique = set(), []
  for study in studies:
    stem = re.sub(r"[^\w.-]+", "_", study.name).strip(".") or "study"
    name, n = stem, 1
    while name in used:
      n += 1
      name = f"{stem}-{n}"
    used.add(name)
    unique.append(dataclasses.replace(study, name=name))
  return unique


def _read_in_batches(config: ml_collections.ConfigDict, entries: Sequence[Any],
                     load: Callable[[Any], np.ndarray], name: Callable[[Any], str],
                     describe: Callable[[Any, Exception], str], units: tuple[str, str],
                     skipped: list[tuple[str, str]] | None
                     ) -> Iterator[tuple[list[Any], np.ndarray, np.ndarray]]:
  """(readable entries, images [B, ...] zero-padded, valid [B]) per eval batch.

  `load(entry)` gives one row's images ([H, W, 3] or [V, H, W, 3]) or raises
  ImageError; such an entry is skipped: warned about as `describe(entry, error)`,
  appended to `skipped` as (name(entry), reason) and counted in `units`
  (singular, plural) at the end.
  """
  batch = config.eval.batch_size
  spec = batch_spec.BatchSpec.from_config(config, batch_size=batch)
  chunk, n_skipped = [], 0

  def emit() -> tuple[list[Any], np.ndarray, np.ndarray]:
    out = spec.zeros(("images",))["images"]
    out[:len(chunk)] = [images for _, images in chunk]
    return [entry for entry, _ in chunk], out, np.arange(batch) < len(chunk)

  for entry in entries:
    try:
      chunk.append((entry, load(entry)))
    except images_lib.ImageError as e:
      n_skipped += 1
      logging.warning("skipping %s", describe(entry, e))
      if skipped is not None:
        skipped.append((name(entry), str(e)))
    if len(chunk) == batch:
      yield emit()
      chunk = []
  if chunk:
    yield emit()
  if n_skipped:
    logging.warning("skipped %d unreadable %s", n_skipped, units[n_skipped != 1])


def _study_batches(config: ml_collections.ConfigDict, paths: str | os.PathLike | Sequence[str],
                   skipped: list[tuple[str, str]] | None) -> Iterator[dict[str, Any]]:
  """`predict_batches` for num_views > 1: one row per readable study."""
  def load(study: Study) -> np.ndarray:
    if study.problem:
      raise images_lib.ImageError(study.problem)
    return np.stack([_load_image(config, p) for p in study.views])

  for studies, images, valid in _read_in_batches(
      config, list_studies(paths, config.data.num_views), load, lambda s: s.name,
      lambda s, e: f"study {s.name}: {e}", ("study", "studies"), skipped):
    yield {"images": images, "valid": valid, "paths": [s.views for s in studies],
           "studies": studies}


def _load_image(config: ml_collections.ConfigDict, path: str) -> np.ndarray:
  """One image as the network sees it: [image_size, image_size, 3] float32."""
  return images_lib.load(path, config.data.resize_size, config.data.image_size,
                         apply_exif_orientation=config.data.apply_exif_orientation)


def predict_batches(
    config: ml_collections.ConfigDict, paths: str | os.PathLike | Sequence[str],
    skipped: list[tuple[str, str]] | None = None,
) -> Iterator[dict[str, Any]]:
  """User images for prediction, in batches of config.eval.batch_size.

  Args:
    config: run config (image sizes, eval.batch_size, data.num_views).
    paths: an image file, a directory of images, or a list of files; with
      data.num_views > 1 studies instead (`list_studies`).
    skipped: if given, (path, reason) of each unreadable image is appended
      ((study name, reason) of each unreadable study with num_views > 1).

  Yields:
    {"images": float32 [B, H, W, 3], "valid": bool [B], "paths": list[str]};
    unreadable images are skipped with a warning, the last batch is padded.
    With num_views > 1: images [B, V, H, W, 3], "paths" each study's view
    files and "studies" its `Study`.
  """
  if config.data.num_views != 1:
    yield from _study_batches(config, paths, skipped)
    return
  for paths_read, images, valid in _read_in_batches(
      config, list_images(paths), functools.partial(_load_image, config), lambda p: p,
      lambda p, e: str(e), ("image(s)", "image(s)"), skipped):
    yield {"images": images, "valid": valid, "paths": paths_read}
