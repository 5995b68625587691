"""The collectives of a compiled program, read from its optimised HLO text.

Also the reader of that text that micar_jax.performance.hlo_cost shares: `parse_module`
splits it into computations of instructions (name, result type, opcode, operands,
attributes).

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

Counts are static: an instruction inside a loop body counts once. TPU repeats an async
collective, under one channel id, in each fusion that carries it until it is done: one
channel id counts once.
"""

import dataclasses
import math
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
         "collective-permute", "collective-broadcast")
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
               "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\](\{[^{}]*\})?")  # dtype, dims, layout
CHANNEL = re.compile(r"channel_id=(\d+)")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_DEF = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_OPCODE = re.compile(r"\s*([\w\-]+)\(")
_GROUPS_MESH = re.compile(r"replica_groups=mesh\[([^\]]*)\][^{]*\{([^}]*)\}")
_GROUPS_LIST = re.compile(r"replica_groups=\{(\{[\d,]*\})")
_GROUPS_IOTA = re.compile(r"replica_groups=\[[\d,]*?(\d+)\]<=")


@dataclasses.dataclass
class Collective:
  """The totals of one collective kind (per device)."""

  kind: str
  count: int = 0
  bytes: float = 0.0
  sent: float = 0.0


@dataclasses.dataclass
class Instruction:
  """One HLO instruction: `name = type opcode(operands), attrs`."""

  name: str
  type: str  # the result type, layouts included
  opcode: str
  operands: list[str]
  attrs: str  # everything after the operand list
  root: bool = False

  def called(self, key: str) -> str | None:
    """The computation named by attribute `key` (calls, to_apply, body, ...)."""
    found = re.search(rf"\b{key}=%?([\w.\-]+)", self.attrs)
    return found.group(1) if found else None


def _closing(text: str, start: int) -> int:
  """Index just past the bracket group that opens at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    depth += (text[i] in "([{") - (text[i] in ")]}")
    if depth == 0:
      return i + 1
  return len(text)


def split(text: str) -> list[str]:
  """Top-level comma-separated parts (commas inside brackets stay)."""
  parts, depth, begin = [], 0, 0
  for i, c in enumerate(text + ","):
    depth += (c in "([{") - (c in ")]}")
    if c == "," and depth == 0:
      parts.append(text[begin:i].strip())
      begin = i + 1
  return [p for p in parts if p]


def _instruction(line: str) -> Instruction | None:
  defined = _DEF.match(line)
  if not defined:
    return None
  at = defined.end()
  # A tuple type is bracketed; an array type (layout included) has no spaces.
  end = _closing(line, at) if line[at:at + 1] == "(" else line.find(" ", at)
  opcode = _OPCODE.match(line, end) if end > 0 else None
  if not opcode:
    return None
  close = _closing(line, opcode.end() - 1)
  # An operand is `%name`, or `type %name` in older printers: its last word.
  operands = [p.split()[-1].lstrip("%") for p in split(line[opcode.end():close - 1])]
  return Instruction(defined.group(2), line[at:end], opcode.group(1), operands,
                     line[close:], bool(defined.group(1)))


def parse_module(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
  """The computations of an HLO module by name, and the entry computation's name."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = "", None
  for raw in hlo_text.splitlines():
    line = re.sub(r"/\*.*?\*/", "", raw)  # tuple types carry /*index=5*/ comments
    if current is None:
      header = _HEADER.match(line)
      if header and not line.startswith("HloModule"):
        current = computations.setdefault(header.group(2), [])
        entry = header.group(2) if header.group(1) else entry
    elif line.strip() == "}":
      current = None
    elif (instruction := _instruction(line)) is not None:
      current.append(instruction)
  return computations, entry


def array_bytes(type_text: str) -> list[float]:
  """Sizes of the arrays of an HLO type (`bf16[8,128]{1,0}` or a tuple), scalars dropped."""
  return [DTYPE_BYTES[dtype] * math.prod(int(d) for d in re.findall(r"\d+", dims))
          for dtype, dims, _ in ARRAY.findall(type_text) if dtype in DTYPE_BYTES and dims]


def outputs(inst: Instruction) -> list[str]:
  """Types of the buffers an op writes: an async start returns its operands too, and
  scalar contexts (a collective's results are the second half of its arrays; a
  copy-start's, the first array)."""
  if not inst.opcode.endswith("-start") or not inst.type.startswith("("):
    return [inst.type]
  parts = [p for p in split(inst.type[1:-1]) if array_bytes(p)]
  return parts[:1] if inst.opcode == "copy-start" else parts[len(parts) // 2:]


def group_size(line: str, num_devices: int) -> int:
  """Devices in each replica group of an instruction (all of them without replica_groups).

  Groups are written as lists ({{0,1},{2,3}}), iota ([4,2]<=[8]: groups of 2) or mesh
  axes (mesh['axis_0'=2,'axis_1'=4] {'axis_1'}: the named axes, 4 devices)."""
  mesh = _GROUPS_MESH.search(line)
  if mesh:
    sizes = dict(re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
    return math.prod(int(sizes[a]) for a in re.findall(r"'(\w+)'", mesh.group(2)))
  listed = _GROUPS_LIST.search(line)
  if listed:
    return max(len(listed.group(1).strip("{}").split(",")), 1)
  iota = _GROUPS_IOTA.search(line)
  return int(iota.group(1)) if iota else num_devices


def sent(kind: str, size: float, n: int) -> float:
  """Bytes each device sends for a collective of `kind` with result `size` over n devices."""
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
  seen = set()
  for body in parse_module(hlo_text)[0].values():
    for inst in body:
      channel = CHANNEL.search(inst.attrs)
      entry = totals.get(inst.opcode.removesuffix("-start"))
      if not entry or (channel and channel.group(1) in seen):
        continue
      if channel:
        seen.add(channel.group(1))
      size = float(sum(array_bytes(", ".join(outputs(inst)))))
      entry.count += 1
      entry.bytes += size
      entry.sent += sent(entry.kind, size, group_size(inst.attrs, num_devices))
  return [c for c in totals.values() if c.count]
