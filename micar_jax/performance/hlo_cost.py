"""A per-op roofline ESTIMATE of a compiled program's time, from its optimised HLO text.

`compiled.as_text()`, the scheduled per-device program, reads the same on TPU, GPU and
CPU (`cost_analysis()` is absent for GPU under a deviceless compile and, on TPU, counts
on-chip buffers and a loop body once). Each op is costed alone, and the step is the SUM
of op times in schedule order: op time = max(FLOPs / peak, HBM bytes / HBM bandwidth,
collective time), a collective taking chip.collective_latency_s + the bytes each device
sends (collectives.sent) / ICI bandwidth (`latency`-bound when the fixed part is larger).
A `while` counts its body `known_trip_count` times (once, and listed in
unknown_trip_counts, without one); a `call` counts in place, a `conditional` as its
costliest branch. A fusion is one op: its operands and results (a fused slice reads
only what it returns, an in-place dynamic-update-slice writes only its update) and the
FLOPs of its fused computation: dot 2 x result x contracting size; convolution 2 x
result x kernel window x kernel input features (per group; borders not subtracted);
reduce 1 per input element, other arithmetic 1 per result element, data movement 0.
HBM bytes leave out scalars and arrays whose layout names an on-chip memory space
(`S(n)`, n >= 1: TPU's VMEM and the like); tile padding is ignored.

Async halves (`X-start`/`X-done`, `copy-start`/`copy-done` prefetches, TPU's fusions
around AsyncCollectiveStart/Done, matched by channel id) overlap the ops between them:
the start queues its transfer on a stream (one for collectives, one for copies, one
transfer at a time each) and the done waits for what is left, which is all the
start's row adds. An op needing a figure the chip table lacks has time None, and so
has the step: unknown, not guessed.
"""

import dataclasses
import math
import re
from typing import Any

from micar_jax.performance import chips, collectives
from micar_jax.performance.collectives import Instruction

NOTE = ("estimates: sum over the optimised HLO's ops of max(FLOPs / peak, HBM bytes / HBM "
        "bandwidth, collective latency + bytes sent / ICI bandwidth), loops x trip count, "
        "async copies and collectives overlapped (micar_jax/performance/chips.py); real "
        "steps are slower")
BOUNDS = ("compute", "memory", "collective", "latency")

# Ops that only name, group or reinterpret buffers: no FLOPs, no traffic, no row.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "opt-barrier", "add-dependency", "domain"}
# Ops that move or rearrange data without arithmetic.
_MOVES = _FREE | {"broadcast", "reshape", "transpose", "copy", "slice", "dynamic-slice",
                  "dynamic-update-slice", "concatenate", "pad", "iota", "reverse", "gather",
                  "scatter", "convert", "bitcast-convert", "copy-start", "custom-call",
                  "slice-start", "slice-done"}
_SLICES = {"slice", "dynamic-slice", "gather"}  # read only the part they return
_REDUCES = {"reduce", "reduce-window", "select-and-scatter"}
_SKIP_SCOPES = {"while", "body", "cond", "closed_call", "checkpoint", "remat", "branch",
                "shard_map"}
_SPACE = re.compile(r"S\((\d+)\)")
_TRIP = re.compile(r'known_trip_count"?\s*:\s*\{\s*"n"\s*:\s*"?(\d+)')
_CONTRACTING = re.compile(r'lhs_contracting_dim(?:s|ensions)["=:\s{\[]*([\d,"\s]*)')
_KERNEL_LABELS = re.compile(r"dim_labels=[^_\s]+_([^-\s]+)->")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_LHS_DILATE = re.compile(r"lhs_dilate=([\dx]+)")


@dataclasses.dataclass
class Row:
  """One op's share of the step, summed over its `count` executions."""

  name: str
  opcode: str
  region: str
  count: int
  flops: float
  hbm_bytes: float
  time_s: float | None  # what it adds to the step; None where a chip figure is missing
  bound: str | None  # one of BOUNDS


@dataclasses.dataclass
class Estimate:
  """The per-op estimate of one program, per device."""

  rows: list[Row]
  step_s: float | None
  peak_flops: float | None
  unknown_trip_counts: list[str]

  @property
  def flops(self) -> float:
    return sum(r.flops for r in self.rows)

  @property
  def hbm_bytes(self) -> float:
    return sum(r.hbm_bytes for r in self.rows)

  def top(self, n: int = 10) -> list[dict[str, Any]]:
    """The n regions with the most estimated time (most HBM bytes where times are
    unknown): time, share of the step, FLOPs, bytes, ops and the bound of most of it."""
    groups: dict[str, dict[str, Any]] = {}
    for r in self.rows:
      g = groups.setdefault(r.region, {"region": r.region, "time_s": 0.0, "flops": 0.0,
                                        "hbm_bytes": 0.0, "ops": 0, "bounds": {}})
      g["flops"], g["hbm_bytes"], g["ops"] = (g["flops"] + r.flops,
                                              g["hbm_bytes"] + r.hbm_bytes, g["ops"] + r.count)
      g["time_s"] = None if None in (g["time_s"], r.time_s) else g["time_s"] + r.time_s
      g["bounds"][r.bound] = g["bounds"].get(r.bound, 0.0) + (r.time_s or 0.0)
    for g in groups.values():
      bounds = g.pop("bounds")
      g["bound"] = max(bounds, key=bounds.get) if g["time_s"] else None
      g["share"] = g["time_s"] / self.step_s if self.step_s and g["time_s"] else None
    return sorted(groups.values(), key=lambda g: (g["time_s"] or 0.0, g["hbm_bytes"]),
                  reverse=True)[:n]

  def summary(self, batch_size: int | None = None, model_flops: float | None = None,
              num_devices: int = 1, top: int = 10) -> dict[str, Any]:
    """JSON-ready figures: the step, its seconds by bound, images/s and MFU (given the
    global batch and model FLOPs per step) and the top regions; None where unknown."""
    step = self.step_s
    by_bound = {b: sum((r.time_s for r in self.rows if r.bound == b), 0.0)
                for b in BOUNDS} if step else None
    return {
        "step_s": step, "flops": self.flops, "hbm_bytes": self.hbm_bytes, "by_bound_s": by_bound,
        "bound": max(by_bound, key=by_bound.get) if by_bound else None,
        "images_per_s": batch_size / step if batch_size and step else None,
        "mfu": (model_flops / (step * self.peak_flops * num_devices)
                if model_flops and step and self.peak_flops else None),
        "unknown_trip_counts": self.unknown_trip_counts, "top_regions": self.top(top),
    }


def _dims(type_text: str) -> list[int]:
  """Dimensions of the first array of a type (a tuple's first element)."""
  found = collectives.ARRAY.search(type_text)
  return [int(d) for d in re.findall(r"\d+", found.group(2))] if found else []


def _hbm_bytes(type_text: str) -> float:
  """Bytes of the non-scalar arrays of a type held in HBM (layout without memory space
  S(n), n >= 1)."""
  in_hbm = [m.group(0) for m in collectives.ARRAY.finditer(type_text)
            if not (space := _SPACE.search(m.group(3) or "")) or int(space.group(1)) == 0]
  return float(sum(collectives.array_bytes(", ".join(in_hbm))))


def _channel(inst: Instruction) -> str | None:
  found = collectives.CHANNEL.search(inst.attrs)
  return found.group(1) if found else None


def region(inst: Instruction) -> str:
  """A readable label: the module path of the op's `op_name` metadata, without jit/jvp
  wrappers, method scopes and the primitive; else the traced function or the opcode
  ("combined all-reduce" for ops that XLA merged)."""
  found = _OP_NAME.search(inst.attrs)
  if found and "/(" in found.group(1) and ":" in found.group(1):
    return f"combined {inst.opcode}"  # XLA's combiners list the merged ops' names, a:b:...
  parts = found.group(1).split("/") if found else [""]
  path: list[str] = []
  for p in parts[1:-1]:  # a transform (shard_map) repeats the scopes it was entered from
    if re.fullmatch(r"[A-Za-z_]\w*", p) and p not in _SKIP_SCOPES and p not in path:
      path.append(p)
  traced = re.fullmatch(r"jit\((\w+)\)", parts[0])
  return "/".join(path) or (traced.group(1) if traced and len(parts) > 1 else
                            f"unnamed {inst.opcode}")


class _Costing:
  """Walks a parsed module in schedule order, costing each op on one chip."""

  def __init__(self, hlo_text: str, chip: chips.Chip, num_devices: int):
    self.computations, self.entry = collectives.parse_module(hlo_text)
    self.types = {name: {i.name: i.type for i in body}
                  for name, body in self.computations.items()}
    self.peak = chip.peak_tflops * 1e12 if chip.peak_tflops else None
    self.hbm = chip.hbm_gbps * 1e9 if chip.hbm_gbps else None
    self.ici = chip.ici_gbps * 1e9 if chip.ici_gbps else None
    self.latency = chip.collective_latency_s
    self.num_devices = num_devices
    self.unknown_trips: list[str] = []

  def body(self, inst: Instruction) -> list[Instruction]:
    return self.computations[inst.called("calls")]

  def flops(self, inst: Instruction, types: dict[str, str]) -> float:
    op = inst.opcode
    if op == "fusion":
      inner = self.types[inst.called("calls")]
      return sum(self.flops(i, inner) for i in self.body(inst))
    if op == "convolution" or (op == "custom-call" and "dim_labels=" in inst.attrs):
      # 2 x forward output x kernel taps x kernel input features. A cuDNN call's
      # dim_labels describe its forward conv, whose output and kernel sit elsewhere in
      # the backward calls: dx = f(dy, w), dw = f(x, dy).
      output, kernel = inst.type, types.get(inst.operands[1], "")
      if "convBackwardInput" in inst.attrs:
        output = types.get(inst.operands[0], "")
      elif "convBackwardFilter" in inst.attrs:
        output, kernel = types.get(inst.operands[1], ""), inst.type
      labels, kernel_dims = _KERNEL_LABELS.search(inst.attrs), _dims(kernel)
      if not labels or len(labels.group(1)) != len(kernel_dims):
        return 0.0
      taps = math.prod(d for d, c in zip(kernel_dims, labels.group(1)) if c.isdigit())
      # An input dilated by d (a strided conv's gradient, ragged_dot's masked form on
      # TPU) has a hole under all but 1/d of the taps along that dimension.
      dilated = _LHS_DILATE.search(inst.attrs)
      if dilated:
        taps /= math.prod(int(d) for d in dilated.group(1).split("x"))
      return (2.0 * math.prod(_dims(output)) * taps
              * kernel_dims[labels.group(1).index("i")])
    contracting = _CONTRACTING.search(inst.attrs)  # dot, or a GPU library gemm's config
    if op in ("dot", "custom-call") and contracting:
      lhs = _dims(types.get(inst.operands[0], ""))
      inner_size = math.prod(lhs[int(d)] for d in re.findall(r"\d+", contracting.group(1)))
      return 2.0 * math.prod(_dims(inst.type)) * inner_size
    if op in _REDUCES:
      return float(math.prod(_dims(types.get(inst.operands[0], ""))))
    if op in _MOVES or op.removesuffix("-start") in collectives.KINDS:
      return 0.0
    return float(math.prod(_dims(inst.type)))

  def collectives_in(self, inst: Instruction) -> list[Instruction]:
    """The collectives an op runs: itself, or those of its fused computation."""
    if inst.opcode.removesuffix("-start") in collectives.KINDS:
      return [inst]
    if inst.opcode != "fusion":
      return []
    return [c for i in self.body(inst) for c in self.collectives_in(i)]

  def role(self, inst: Instruction) -> str | None:
    """'start' or 'done' for the halves of an async op (TPU writes an async collective
    as fusions holding an AsyncCollectiveStart or AsyncCollectiveDone custom-call)."""
    if inst.opcode.endswith(("-start", "-done")):
      return inst.opcode.rsplit("-", 1)[1]
    if inst.opcode == "fusion":
      targets = "".join(i.attrs for i in self.body(inst) if i.opcode == "custom-call")
      return next((h for h in ("start", "done") if f'"AsyncCollective{h.title()}"' in targets),
                  None)
    return None

  def traffic(self, inst: Instruction, types: dict[str, str]) -> float:
    """HBM bytes an op reads and writes; a fusion's operands are read as its body uses them."""
    root, inner, uses = inst, types, {}
    if inst.opcode == "fusion":
      body, inner = self.body(inst), self.types[inst.called("calls")]
      root = next((i for i in body if i.root), body[-1])
      params = {p.name: int(p.operands[0]) for p in body if p.opcode == "parameter"}
      for u in body:
        for i, o in enumerate(u.operands):
          if o in params:
            uses.setdefault(inst.operands[params[o]], []).append((u, i))
    else:
      for i, o in enumerate(inst.operands):
        uses.setdefault(o, []).append((inst, i))
    written = collectives.outputs(inst)
    if inst.opcode == "slice-start":
      # An async slice reads just its slice, usually into on-chip memory.
      return (float(sum(collectives.array_bytes(", ".join(written))))
              + _hbm_bytes(", ".join(written)))
    if inst.opcode == "custom-call" and inst.type.startswith("("):
      parts = collectives.split(inst.type[1:-1])  # cuBLAS/cuDNN end with a scratch buffer
      written = parts[:-1] if parts[-1].startswith(("s8[", "u8[")) else parts
    total = _hbm_bytes(", ".join(written))
    if total and root.opcode == "dynamic-update-slice":  # in place: writes the update only
      total = min(total, _hbm_bytes(inner.get(root.operands[1], "")))
    for operand, used in uses.items():
      full = _hbm_bytes(types.get(operand, ""))
      if full and all(i == 0 and u.opcode in _SLICES for u, i in used):
        full = min(full, sum(_hbm_bytes(u.type) for u, _ in used))
      elif all(i == 0 and u.opcode == "dynamic-update-slice" for u, i in used):
        full = 0.0  # updated in place: the rest of the buffer is never read
      total += full
    return total

  def seconds(self, flops: float, hbm_bytes: float, found: list[Instruction]
              ) -> tuple[float | None, str | None]:
    """The roofline time of an op and its bound (None, None where a figure is missing)."""
    groups = [collectives.group_size(c.attrs, self.num_devices) for c in found]
    sent = sum(collectives.sent(c.opcode.removesuffix("-start"),
                                sum(collectives.array_bytes(", ".join(collectives.outputs(c)))), n)
               for c, n in zip(found, groups) if n > 1)
    calls = sum(n > 1 for n in groups)  # a group of one device moves nothing
    need = [(flops, self.peak), (hbm_bytes, self.hbm), (sent, self.ici), (calls, self.latency)]
    if any(amount and rate is None for amount, rate in need):
      return None, None
    transfer = sent / self.ici if sent else 0.0
    latency = calls * self.latency if calls else 0.0
    terms = {"compute": flops / self.peak if flops else 0.0,
             "memory": hbm_bytes / self.hbm if hbm_bytes else 0.0,
             "latency" if latency > transfer else "collective": latency + transfer}
    bound = max(terms, key=terms.get)
    return terms[bound], bound

  def walk(self, name: str, count: int) -> tuple[float, list[Row]]:
    """Seconds of one execution of a computation, and its rows (values x count)."""
    types, clock, rows = self.types[name], 0.0, []
    pending: dict[str, tuple[float, Row]] = {}  # async start -> (its finish, its row)
    owner: dict[str, str] = {}  # channel id of an async collective -> its start
    free_at = {"copy": 0.0, "collective": 0.0}  # when each stream's queued work ends
    for inst in self.computations[name]:
      op = inst.opcode
      if op in _FREE:
        continue
      if op == "while":
        trip = _TRIP.search(inst.attrs)
        if not trip:
          self.unknown_trips.append(inst.name)
        n = int(trip.group(1)) if trip else 1
        # The condition runs once more than the body, to see the loop end.
        body_s, body_rows = self.walk(inst.called("body"), count * n)
        cond_s, cond_rows = self.walk(inst.called("condition"), count * (n + bool(trip)))
        clock += n * body_s + (n + bool(trip)) * cond_s
        rows += body_rows + cond_rows
        continue
      # A call, a conditional's branches or a generic async wrapper, as if run in place.
      called = [n for n in re.findall(r"[\w.\-]+", inst.attrs.split("metadata=")[0])
                if n in self.computations] if op in ("call", "conditional", "async-start") else []
      if called:
        seconds, chosen = max((self.walk(c, count) for c in called),
                              key=lambda c: (c[0], sum(r.hbm_bytes for r in c[1])))
        clock += seconds
        rows += chosen
        continue
      role, found = self.role(inst), self.collectives_in(inst)
      channels = [c for c in map(_channel, found) if c]
      if role == "done":
        key = next((k for k in [*inst.operands[:1], *map(owner.get, channels)]
                    if k in pending), None)
        if key:
          finish, start = pending.pop(key)
          waited = max(0.0, finish - clock)
          clock += waited
          start.time_s = None if start.time_s is None else start.time_s + waited * start.count
          found = []  # the start's collective, costed there
        if op.endswith("-done"):
          continue
      # TPU threads a collective in flight through fusions until its done: costed at its start.
      in_flight = {c for c, start in owner.items() if start in pending}
      found = [c for c in found if _channel(c) not in in_flight]
      flops, hbm = self.flops(inst, types), self.traffic(inst, types)
      queued = 0.0
      if role == "start":  # the transfer is queued on its stream; the done waits for the rest
        copy = op == "copy-start"
        seconds, bound = self.seconds(flops, hbm, []) if not copy else (0.0, None)
        queued, queued_bound = self.seconds(0.0, hbm if copy else 0.0, found)
        bound = queued_bound if (queued or 0.0) > (seconds or 0.0) else bound
        seconds = None if queued is None else seconds
      else:
        seconds, bound = self.seconds(flops, hbm, found)
      label = inst if _OP_NAME.search(inst.attrs) or not found else found[0]
      row = Row(inst.name, op, region(label), count, flops * count, hbm * count,
                None if seconds is None else seconds * count, bound)
      clock += seconds or 0.0
      if role == "start":
        stream = "copy" if op == "copy-start" else "collective"
        free_at[stream] = max(clock, free_at[stream]) + (queued or 0.0)
        pending[inst.name] = (free_at[stream], row)
        owner.update((c, inst.name) for c in channels)
      if flops or hbm or seconds or found:
        rows.append(row)
    for finish, start in pending.values():  # async work still running ends with its caller
      if start.time_s is not None:
        start.time_s += max(0.0, finish - clock) * start.count
      clock = max(clock, finish)
    return clock, rows


def estimate(hlo_text: str, chip: chips.Chip, num_devices: int) -> Estimate:
  """The per-op estimate of one compiled program (`compiled.as_text()`), per device.

  Args:
    hlo_text: the optimised HLO of the program.
    chip: peak, HBM bandwidth, ICI bandwidth and collective latency; an op that needs a
      figure the chip lacks has time None, and so has the step.
    num_devices: devices of the program (the group of a collective without
      replica_groups).
  """
  costing = _Costing(hlo_text, chip, num_devices)
  seconds, rows = costing.walk(costing.entry, 1)
  known = all(r.time_s is not None for r in rows)
  return Estimate(rows, seconds if known else None, costing.peak, costing.unknown_trips)
