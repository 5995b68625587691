"""The readable tables of micar_jax.performance.plan (its JSON carries the same figures)."""

from collections.abc import Sequence
from typing import Any


def _gib(n: float | None) -> str:
  """Bytes in GiB, MiB or KiB, whichever keeps the number >= 1."""
  if n is None:
    return "n/a"
  for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
    if abs(n) >= 1 << shift:
      return f"{n / (1 << shift):.2f} {unit}"
  return f"{n:.0f} B"


def _count(x: float | None, unit: str = "") -> str:
  if x is None:
    return "n/a"
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.2f} {prefix}{unit}"
  return f"{x:.0f} {unit}".rstrip()


def _ms(s: float | None) -> str:
  """Seconds in ms, or in us below a millisecond."""
  if s is None:
    return "n/a"
  return f"{1e3 * s:.2f} ms" if s >= 1e-3 else f"{1e6 * s:.1f} us"


def header(result: dict[str, Any]) -> list[str]:
  topo, model = result["topology"], result["model"]
  chip = topo["chip"]
  shape = "x".join(map(str, topo["shape"]))
  return [
      f"topology  {topo['name']}: {topo['chips']} x {topo['device_kind']} ({shape}), "
      f"{_gib(chip['hbm_bytes'])} per chip"
      + (f" [{topo['accelerator_type']}]" if topo["accelerator_type"] else ""),
      f"model     d_model {model['d_model']}, {model['num_layers']} layers, "
      f"{model['num_experts']} experts top-{model['top_k']} ({model['moe_impl']}), "
      f"{model['dtype']}, vocab {model['vocab_size']}, remat {model['remat']}",
  ]


def program_lines(name: str, p: dict[str, Any], chip_bytes: int | None) -> list[str]:
  """Memory and collectives of one compiled program."""
  lines = [f"{name}  (compiled in {p['compile_s']:.1f} s)"]
  if p["error"]:
    return lines + [f"  does not fit: {p['error']}"]
  m = p["memory_bytes"] or {}
  fit = {True: "fits", False: "DOES NOT FIT", None: "unknown"}[p["fits"]]
  share = f", {100 * p['need_bytes'] / chip_bytes:.0f}% of the chip" if (
      p["need_bytes"] and chip_bytes) else ""
  lines += [
      "  per device  arguments {}  outputs {}  temporaries {}  aliased {}".format(
          *(_gib(m.get(k)) for k in ("arguments", "outputs", "temporaries", "aliased"))),
      f"              total {_gib(m.get('total'))}  XLA peak {_gib(m.get('peak'))}  -> "
      f"{fit}{share}",
  ]
  if p["collectives"]:
    lines.append(f"  {'collective':<20}{'count':>7}{'bytes/device':>16}{'sent/device (est.)':>22}")
    lines += [f"  {c['kind']:<20}{c['count']:>7}{_count(c['bytes'], 'B'):>16}"
              f"{_count(c['sent'], 'B'):>22}" for c in p["collectives"]]
  else:
    lines.append("  collectives none")
  return lines


def estimate_lines(p: dict[str, Any], top: int = 0) -> list[str]:
  """The per-op estimate of one program (micar_jax.performance.hlo_cost): its totals, the
  step and what bounds it, images/s and MFU where known, and its `top` regions."""
  e = p["estimate"]
  if not e:
    return []
  lines = [f"  per op      {_count(e['flops'], 'FLOP')} and {_count(e['hbm_bytes'], 'B')} HBM "
           "traffic per device (optimised HLO)"]
  if e["step_s"] is None:
    lines.append("  ESTIMATE    step unknown: the chip table lacks a figure it needs")
  else:
    parts = ", ".join(f"{b} {_ms(s)}" for b, s in e["by_bound_s"].items() if s)
    lines.append(f"  ESTIMATE    step >= {_ms(e['step_s'])} ({e['bound']}-bound; sum over ops: "
                 f"{parts})")
  if e["images_per_s"] is not None:
    mfu = "n/a" if e["mfu"] is None else f"{100 * e['mfu']:.1f}%"
    lines.append(f"  ESTIMATE    <= {_count(e['images_per_s'])} images/s, MFU <= {mfu}")
  if e["unknown_trip_counts"]:
    lines.append(f"  note        {len(e['unknown_trip_counts'])} loop(s) of unknown trip count "
                 "counted once: " + ", ".join(e["unknown_trip_counts"][:3]))
  regions = e["top_regions"][:top]
  if regions:
    lines.append(f"  {'top regions (est.)':<46}{'time':>11}{'share':>7}  {'bound':<11}"
                 f"{'FLOP':>11}{'HBM':>11}")
    for r in regions:
      time_s = "unknown" if r["time_s"] is None else _ms(r["time_s"])
      share = "" if r["share"] is None else f"{100 * r['share']:.0f}%"
      name = r["region"] if len(r["region"]) <= 45 else "..." + r["region"][-42:]
      lines.append(f"  {name:<46}{time_s:>11}{share:>7}  {r['bound'] or '-':<11}"
                   f"{_count(r['flops']):>11}{_count(r['hbm_bytes'], 'B'):>11}")
  return lines


def format_plan(result: dict[str, Any]) -> str:
  train, decode = result["train"], result["decode"]
  chip_bytes = result["topology"]["chip"]["hbm_bytes"]
  mesh = " ".join(f"{k}={v}" for k, v in train["mesh"].items())
  lines = header(result)
  lines += program_lines(f"train step  batch {train['batch_size']}, mesh {mesh}", train,
                         chip_bytes)
  if not train["error"]:
    lines.append(f"  model       {_count(train['model_flops'], 'FLOP')} per step "
                 "(micar_jax.models.flops)")
  lines += estimate_lines(train, top=10)
  if decode:
    lines += program_lines(f"decode ({decode['method']})  batch {decode['batch_size']}", decode,
                           chip_bytes)
    lines += estimate_lines(decode)
  lines += [f"note      {result['estimate_note']}", f"plan took {result['plan_s']:.1f} s"]
  return "\n".join(lines)


def format_search(result: dict[str, Any], commands: Sequence[str]) -> str:
  lines = header(result)
  lines.append(f"search    {result['compiled']} meshes x batch sizes compiled, "
               f"{result['fit']} fit, in {result['search_s']:.1f} s")
  lines.append(f"  {'#':<3}{'batch':>6}  {'data':>4} {'fsdp':>4} {'expert':>6} {'tensor':>6}"
               f"{'memory':>12}{'step (est.)':>14}{'images/s (est.)':>17}")
  for rank, (c, command) in enumerate(zip(result["ranked"], commands), 1):
    e, m = c["estimate"] or {}, c["mesh"]
    lines.append(f"  {rank:<3}{c['batch_size']:>6}  {m['data']:>4} {m['fsdp']:>4} "
                 f"{m['expert']:>6} {m['tensor']:>6}{_gib(c['need_bytes']):>12}"
                 f"{_ms(e.get('step_s')):>14}{_count(e.get('images_per_s')):>17}")
    lines.append(f"     {command}")
  lines.append(f"note      {result['estimate_note']}")
  return "\n".join(lines)
