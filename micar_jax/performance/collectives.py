"""The collectives of a compiled program, read from its optimised HLO text.

Each instruction whose opcode is a collective (or the `-start` half of an
async one; its `-done` half moves nothing) is counted with:

  bytes: the size of its result on one device (the gathered array of an
         all-gather, the reduced array of an all-reduce, the shard a
         reduce-scatter keeps, the exchanged buffer of an all-to-all or a permute);
  sent:  an estimate of the bytes each device sends over the interconnect with
         the usual ring / pairwise algorithms over a group of n devices:
           all-reduce 2(n-1)/n x bytes, all-gather (n-1)/n x bytes,
           reduce-scatter (n-1) x bytes, all-to-all (n-1)/n x bytes,
           collective-permute / broadcast bytes.

Counts are static: an instruction inside a loop body counts once.
"""

import dataclasses
import math
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
         "collective-permute", "collective-broadcast")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
          "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
          "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.*?)\s+(?P<op>"
    + "|".join(sorted(KINDS, key=len, reverse=True)) + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{(\{[\d,]*\})")
_GROUPS_IOTA = re.compile(r"replica_groups=\[[\d,]*?(\d+)\]<=")


@dataclasses.dataclass
class Collective:
  """The totals of one collective kind (per device)."""

  kind: str
  count: int = 0
  bytes: float = 0.0
  sent: float = 0.0


def _array_bytes(type_text: str) -> list[float]:
  """Sizes of the arrays of an HLO type (`bf16[8,128]{1,0}` or a tuple), scalars dropped."""
  sizes = []
  for dtype, dims in _ARRAY.findall(type_text):
    if dtype in _BYTES and dims:
      sizes.append(_BYTES[dtype] * math.prod(int(d) for d in dims.split(",")))
  return sizes


def _group_size(line: str, num_devices: int) -> int:
  listed = _GROUPS_LIST.search(line)
  if listed:
    return max(len(listed.group(1).strip("{}").split(",")), 1)
  iota = _GROUPS_IOTA.search(line)
  return int(iota.group(1)) if iota else num_devices


def _sent(kind: str, size: float, n: int) -> float:
  if kind == "all-reduce":
    return 2 * (n - 1) / n * size
  if kind == "reduce-scatter":
    return (n - 1) * size
  if kind in ("all-gather", "all-to-all", "ragged-all-to-all"):
    return (n - 1) / n * size
  return size


def parse(hlo_text: str, num_devices: int) -> list[Collective]:
  """Collective totals by kind (in KINDS order, kinds that occur only).

  Args:
    hlo_text: `compiled.as_text()`, the optimised per-device program.
    num_devices: devices of the program (the group of a collective without
      replica_groups).
  """
  totals = {kind: Collective(kind) for kind in KINDS}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    sizes = _array_bytes(match.group("type"))
    if match.group("start") and len(sizes) > 1:
      # An async start returns (operands..., results..., [scalar contexts]).
      sizes = sizes[len(sizes) // 2:]
    size = float(sum(sizes))
    entry = totals[match.group("op")]
    entry.count += 1
    entry.bytes += size
    entry.sent += _sent(entry.kind, size, _group_size(line, num_devices))
  return [c for c in totals.values() if c.count]
