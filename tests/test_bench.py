"""The benchmark command: JSON figures of a tiny model on CPU, the peaks table, bad flags."""

import json
import subprocess
import sys

import pytest

from micar_jax import bench, defaults

CLI = [sys.executable, "-m", "micar_jax.bench", "--config=configs/synthetic.py:tiny",
       "--config.mesh.num_devices=1", "--config.data.text_seq_len=8"]


def run_cli(*args):
  return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA A100-SXM4-40GB", 312.0), ("TPU v4", 275.0), ("TPU v5 lite", 197.0),
    ("TPU v5p", 459.0), ("TPU v6 lite", 918.0), ("cpu", None),
])
def test_peak_table_matches_specific_names_first(kind, peak):
  assert bench.peak_tflops(kind) == peak


def test_tiny_config_reports_train_decode_and_pipeline(tmp_path):
  out = run_cli("--steps=2", "--warmup=1", "--decode=greedy,beam", "--decode_batch=2",
                "--decode_repeats=1", "--peak_tflops=0.5", f"--data_dir={tmp_path / 'syn'}",
                "--config.data.synthetic_sizes=(8,2,2)", "--workers=0", "--batches=1")
  assert out.returncode == 0, out.stderr
  result = json.loads(out.stdout)
  assert result["device"] == {"platform": "cpu", "kind": "cpu", "count": 1}
  train = result["train"]
  for key in ("images_per_s", "step_ms", "compile_s", "model_gflop_per_image",
              "model_tflop_per_s", "compiled_memory_bytes"):
    assert train[key] > 0, key
  assert train["mfu"] == pytest.approx(train["model_tflop_per_s"] / 0.5)
  assert train["step_ms"] == pytest.approx(1e3 * train["batch_size"] / train["images_per_s"])
  assert train["peak_memory_bytes"] is None  # CPU has no memory statistics.
  assert set(result["decode"]) == {"greedy", "beam"}
  for method in result["decode"].values():
    assert method["batch_size"] == 2 and method["reports_per_s"] > 0 and method["compile_s"] > 0
    assert 1 <= method["steps_run"] <= method["max_steps"] == 8
  assert result["decode"]["beam"]["beam_width"] == 3
  pipeline = result["input_pipeline"]["workers"]["0"]
  assert pipeline["examples_per_s"] > 0 and pipeline["first_batch_s"] > 0


def test_unknown_decode_method_is_rejected_before_compiling():
  with pytest.raises(ValueError, match="unknown --decode sampling; expected greedy, "):
    bench.run(defaults.base_config(), bench.Options(decode=("greedy", "sampling")))
