"""The prepared folder a loader's examples become: jsonl files, images, left-out rows.

OUT holds `{train,val,test}.jsonl`, `images/` and, when rows were left out,
`skipped.tsv`. Every image path in the jsonl is relative to OUT, so the folder
can be moved or shared on its own: images read from RAW are hard-linked into
OUT/images/ (no extra disk space; RAW may be moved or deleted afterwards) or,
where RAW is on another file system, copied. Their path below RAW is kept
(a leading `images/` is not repeated), so names never collide.
"""

import collections
import concurrent.futures
import hashlib
import json
import os
import re
import shutil

from micar_jax.data import images, registry
from micar_jax.data.prepare import common

SKIPPED_FILE = "skipped.tsv"
# Left-out rows shown on the console; the rest are in SKIPPED_FILE.
SHOWN_SKIPPED = 5
# A reason's kind ends where its details begin: ": ", " (", a path or a quoted value.
_DETAIL = re.compile(r": | \(| /| '| \"")


def _destination(src: str, raw_dir: str, taken: set[str]) -> str:
  """Where an image of RAW goes, relative to OUT: images/<its path below RAW>, not yet in `taken`."""
  rel = os.path.relpath(src, raw_dir)
  parts = rel.split(os.sep)
  if parts[0] == "images":
    parts = parts[1:]
  dest = "/".join(["images"] + parts)
  if rel.startswith(os.pardir + os.sep) or dest in taken:
    # Outside RAW (an annotation path with ".."), or RAW/x and RAW/images/x both used:
    # a hash of the source path keeps the names apart.
    digest = hashlib.sha256(src.encode()).hexdigest()[:12]
    dest = f"images/other/{digest}/{os.path.basename(src)}"
  taken.add(dest)
  return dest


def _link_or_copy(src: str, dest: str) -> bool:
  """Hard-links src to dest, or copies it where linking fails; True if it copied."""
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  try:
    os.link(src, dest)
    return False
  except OSError:
    shutil.copyfile(src, dest)
    return True


def place_images(examples: dict[str, list[common.Example]], request: common.Request
                 ) -> dict[str, list[common.Example]]:
  """Puts every example's images under request.stage_dir; returns examples with OUT-relative paths.

  Images a loader already wrote (paths under request.final_dir) stay where they are.
  """
  final = request.final_dir + os.sep
  moves: dict[str, str] = {}  # source path -> path relative to OUT

  def relative(path: str) -> str:
    if path.startswith(final):
      return os.path.relpath(path, request.final_dir).replace(os.sep, "/")
    if path not in moves:
      moves[path] = _destination(path, request.raw_dir, taken)
    return moves[path]

  taken: set[str] = set()

  out = {}
  for split, rows in examples.items():
    out[split] = [common.Example(relative(e.image) if isinstance(e.image, str)
                                 else [relative(p) for p in e.image], e.report) for e in rows]
  if moves:
    with concurrent.futures.ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 4)) as pool:
      copied = sum(pool.map(lambda item: _link_or_copy(
          item[0], os.path.join(request.stage_dir, *item[1].split("/"))), moves.items()))
    how = (f"copied {copied} (RAW is on another file system)" if copied == len(moves) else
           f"hard-linked {len(moves) - copied}, copied {copied}" if copied else
           f"hard-linked {len(moves)} (no extra disk space)")
    request.note(f"images: {how} into {os.path.join(request.final_dir, 'images')}")
  return out


def write_jsonl(examples: dict[str, list[common.Example]], stage_dir: str) -> None:
  for split in registry.SPLITS:
    with open(os.path.join(stage_dir, f"{split}.jsonl"), "w", encoding="utf-8") as f:
      f.writelines(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples[split])


def count_exif_oriented(examples: dict[str, list[common.Example]], out_dir: str) -> tuple[int, int]:
  """(images with a non-identity EXIF orientation tag, images) among the examples' images.

  `out_dir` is the folder their OUT-relative paths are under (the stage folder
  while preparing). Only headers are read.
  """
  paths = list(dict.fromkeys(
      os.path.join(out_dir, *p.split("/")) for rows in examples.values() for e in rows
      for p in ([e.image] if isinstance(e.image, str) else e.image)))
  if not paths:
    return 0, 0
  with concurrent.futures.ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 4)) as pool:
    return sum(o != 1 for o in pool.map(images.exif_orientation, paths)), len(paths)


def exif_summary(oriented: int, total: int) -> list[str]:
  """The console line for images carrying an EXIF orientation tag (none when no image does)."""
  if not oriented:
    return []
  return [f"EXIF orientation: {oriented} of {total} images carry a rotate/flip tag; not applied, "
          "as the reference (data.apply_exif_orientation=True applies it)"]


def reason_kind(reason: str) -> str:
  """A left-out row's reason without its details: "missing image /r/a.png" -> "missing image"."""
  return _DETAIL.split(reason, maxsplit=1)[0]


def write_skipped(rows: list[tuple[str, str, str]], stage_dir: str) -> None:
  """OUT/skipped.tsv: one `split<TAB>where<TAB>reason` line per left-out row, with a header."""
  if not rows:
    return
  clean = lambda text: " ".join(text.split())
  with open(os.path.join(stage_dir, SKIPPED_FILE), "w", encoding="utf-8") as f:
    f.write("split\twhere\treason\n")
    f.writelines(f"{s}\t{clean(w)}\t{clean(r)}\n" for s, w, r in rows)


def _count_kinds(rows: list[tuple[str, str, str]]) -> str:
  """"8 missing image, 1 empty report": left-out rows per reason kind, most frequent first."""
  kinds = collections.Counter(reason_kind(r) for _, _, r in rows)
  return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


def nothing_usable(rows: list[tuple[str, str, str]]) -> str:
  """The one-line error when every row was left out: the kinds and the first row."""
  _, where, reason = rows[0]
  return (f"all {len(rows)} rows were left out ({_count_kinds(rows)}), e.g. {where}: {reason}; "
          "check RAW against docs/datasets.md")


def skipped_summary(rows: list[tuple[str, str, str]], out_dir: str) -> list[str]:
  """Console lines for the left-out rows: counts by split and by kind, the first few, the file.

  Split "-" holds rows dropped before the split (as the reference drops them).
  """
  if not rows:
    return ["left out: none"]
  by_split = collections.Counter(s for s, _, _ in rows)
  splits = ", ".join(f"{s} {by_split[s]}" for s in ("-",) + registry.SPLITS if by_split[s])
  lines = [f"left out {len(rows)} rows ({splits}): {_count_kinds(rows)}"]
  lines += [f"  [{s}] {w}: {r}" for s, w, r in rows[:SHOWN_SKIPPED]]
  if len(rows) > SHOWN_SKIPPED:
    lines.append(f"  ... {len(rows) - SHOWN_SKIPPED} more")
  lines.append(f"full list: {os.path.join(out_dir, SKIPPED_FILE)}")
  return lines
