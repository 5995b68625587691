"""Top ops of a profiler trace: which events count as ops on device and host, and a real trace."""

import jax
import jax.numpy as jnp
import pytest

from micar_jax.performance import profiling


def meta(pid, name, tid=None):
  if tid is None:
    return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}
  return {"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": name}}


def op(pid, tid, name, dur):
  return {"ph": "X", "pid": pid, "tid": tid, "name": name, "dur": dur, "ts": 0}


def test_device_xla_ops_line_is_summed_alone():
  events = [meta(1, "/device:GPU:0"), meta(1, "XLA Ops", 1), meta(1, "Stream #7", 2),
            meta(1, "XLA Modules", 3), meta(2, "/host:CPU"), meta(2, "python", 1),
            op(1, 1, "fusion.3", 300.0), op(1, 1, "convolution.1", 600.0),
            op(1, 1, "fusion.3", 100.0), op(1, 2, "sm90_xmma_kernel", 650.0),
            op(1, 3, "jit_train_step", 1000.0), op(2, 1, "$python_call", 5000.0)]
  summary = profiling.top_ops(events, top=5)
  assert summary["source"] == "device 'XLA Ops' line"
  assert summary["total_ms"] == pytest.approx(1.0)
  assert [(o["name"], o["ms"], o["count"]) for o in summary["ops"]] == [
      ("convolution.1", 0.6, 1), ("fusion.3", 0.4, 2)]
  assert sum(o["share"] for o in summary["ops"]) == pytest.approx(1.0)


def test_device_lines_without_xla_ops_leave_out_summaries():
  events = [meta(1, "/device:GPU:0"), meta(1, "Stream #7", 2), meta(1, "XLA Modules", 3),
            op(1, 2, "gemm_kernel", 40.0), op(1, 3, "jit_train_step", 100.0)]
  summary = profiling.top_ops(events, top=5)
  assert summary["source"] == "device lines"
  assert [o["name"] for o in summary["ops"]] == ["gemm_kernel"]


def test_host_trace_keeps_xla_executor_ops_only():
  events = [meta(2, "/host:CPU"), meta(2, "tf_XLAEigen/1", 5), meta(2, "python", 1),
            op(2, 5, "dot.2", 30.0), op(2, 5, "ThunkExecutor::Execute", 90.0),
            op(2, 5, "end: dot.2", 1.0), op(2, 1, "$profiler.py trace", 900.0)]
  summary = profiling.top_ops(events, top=5)
  assert summary["source"] == "host XLA threads"
  assert [o["name"] for o in summary["ops"]] == ["dot.2"]


def test_trace_of_a_jitted_function_names_its_ops(tmp_path):
  f = jax.jit(lambda a: jnp.tanh(a @ a) @ a)
  a = jnp.ones((128, 128))
  f(a).block_until_ready()
  summary = profiling.trace_top_ops(lambda: [f(a).block_until_ready() for _ in range(3)],
                                    tmp_path / "trace", top=3)
  assert summary["trace_dir"].startswith(str(tmp_path))
  assert 1 <= len(summary["ops"]) <= 3 and summary["total_ms"] > 0
  assert all(o["ms"] > 0 and "::" not in o["name"] for o in summary["ops"])
