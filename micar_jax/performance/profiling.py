"""A jax.profiler trace of a few calls, summarised as the ops that took the most time.

`trace_top_ops(fn, folder)` runs `fn` under `jax.profiler.trace` with a
Perfetto (Chrome JSON) trace next to the XProf one, then reads that JSON back:
every complete event ("ph": "X") carries a name and a duration in µs. Which
events are ops depends on the backend:

* GPU/TPU: events of the `/device:...` processes. When the runtime adds an
  "XLA Ops" line (HLO op names) only that line is summed, since the stream
  lines hold the same work again as kernel names; otherwise every device line
  except the whole-module and step summaries.
* CPU: events of XLA's own executor threads (names starting "tf_XLA"); the
  Python and client threads only wait for them. Runtime scopes (C++ names
  with "::", such as ThunkExecutor::Execute, which encloses the ops) and
  the "end: ..." markers are left out.
"""

import collections
import gzip
import json
import pathlib
from typing import Any, Callable

import jax

# Device lines that summarise others (whole programs, training steps, launches).
SUMMARY_LINES = ("XLA Modules", "Steps", "Launch Stats", "Source code", "Framework")


def trace_top_ops(fn: Callable[[], Any], folder: str | pathlib.Path, top: int = 20
                  ) -> dict[str, Any]:
  """Runs fn() (which should block until its work is done) under a trace.

  Returns:
    {"trace_dir", "source" (which events were summed), "total_ms", "ops":
    [{"name", "ms", "count", "share"}, ...] top `top` by summed time}.
  """
  folder = pathlib.Path(folder)
  with jax.profiler.trace(str(folder), create_perfetto_trace=True):
    fn()
  traces = sorted(folder.glob("plugins/profile/*/perfetto_trace.json.gz"))
  if not traces:
    raise RuntimeError(f"jax.profiler wrote no perfetto_trace.json.gz under {folder}")
  with gzip.open(traces[-1], "rt", encoding="utf-8") as f:
    events = json.load(f)
  summary = top_ops(events["traceEvents"] if isinstance(events, dict) else events, top)
  return {"trace_dir": str(traces[-1].parent), **summary}


def op_events(events: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
  """(description of the chosen lines, their complete events); see the module docstring."""
  process, thread = {}, {}
  for e in events:
    if e.get("ph") == "M" and e.get("name") == "process_name":
      process[e["pid"]] = e["args"]["name"]
    elif e.get("ph") == "M" and e.get("name") == "thread_name":
      thread[(e["pid"], e["tid"])] = e["args"]["name"]
  complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
  device = [e for e in complete if process.get(e["pid"], "").startswith("/device:")]
  if device:
    xla_ops = [e for e in device if thread.get((e["pid"], e.get("tid"))) == "XLA Ops"]
    if xla_ops:
      return "device 'XLA Ops' line", xla_ops
    return "device lines", [e for e in device
                            if thread.get((e["pid"], e.get("tid"))) not in SUMMARY_LINES]
  return "host XLA threads", [
      e for e in complete if thread.get((e["pid"], e.get("tid")), "").startswith("tf_XLA")
      and "::" not in e["name"] and not e["name"].startswith("end: ")]


def top_ops(events: list[dict[str, Any]], top: int) -> dict[str, Any]:
  """Sums op events by name: {"source", "total_ms", "ops": [...]} (see trace_top_ops)."""
  source, chosen = op_events(events)
  ms, count = collections.Counter(), collections.Counter()
  for e in chosen:
    ms[e["name"]] += e["dur"] / 1e3
    count[e["name"]] += 1
  total = sum(ms.values())
  return {"source": source, "total_ms": total,
          "ops": [{"name": name, "ms": t, "count": count[name], "share": t / total}
                  for name, t in ms.most_common(top)]}
