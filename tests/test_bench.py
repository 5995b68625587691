"""The benchmark command: JSON figures of a tiny model on CPU, the peaks table, bad flags."""

import json
import subprocess
import sys

import pytest

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.performance import bench

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
  assert train["model_tflop_per_s"] == pytest.approx(
      train["model_gflop_per_image"] * train["images_per_s"] / 1e3)
  assert train["step_ms"] == pytest.approx(1e3 * train["batch_size"] / train["images_per_s"])
  assert train["peak_memory_bytes"] is None  # CPU has no memory statistics.
  assert train["peak_memory_note"] == "unavailable: the cpu runtime keeps no memory statistics"
  assert set(result["decode"]) == {"greedy", "beam"}
  for method in result["decode"].values():
    assert method["batch_size"] == 2 and method["reports_per_s"] > 0 and method["compile_s"] > 0
    assert 1 <= method["steps_run"] <= method["max_steps"] == 8
  assert result["decode"]["beam"]["beam_width"] == 3
  pipeline = result["input_pipeline"]["workers"]["0"]
  assert pipeline["examples_per_s"] > 0 and pipeline["first_batch_s"] > 0


@pytest.mark.parametrize("opts, message", [
    (bench.Options(decode=("greedy", "sampling")), "unknown --decode sampling; expected greedy, "),
    (bench.Options(moe_variants=("sort", "megablocks")), "unknown --moe_variants megablocks"),
    (bench.Options(train=False), "--decode needs the trained state"),
    (bench.Options(profile_steps=0), "--profile_steps must be >= 1"),
])
def test_impossible_options_are_rejected_before_compiling(opts, message):
  with pytest.raises(errors.UserError, match=message):
    bench.run(defaults.base_config(), opts)


# Runs the benchmark with these packages unimportable, as on an accelerator image
# that has jax, flax, optax and orbax-checkpoint but no data stack.
BLOCKED = ("grain", "tensorflow", "tensorflow_datasets", "sentencepiece", "array_record")
WITHOUT_DATA_STACK = f"""
import runpy, sys
for name in {BLOCKED!r}:
  sys.modules[name] = None  # makes `import name` raise ImportError
sys.argv = ["bench"] + sys.argv[1:]
code = 0
try:
  runpy.run_module("micar_jax.bench", run_name="__main__")
except SystemExit as e:  # absl's app.run always exits
  code = e.code
loaded = {{name.split(".")[0] for name, module in sys.modules.items() if module is not None}}
assert not loaded & set({BLOCKED!r}), loaded & set({BLOCKED!r})
sys.exit(code)
"""


def test_runs_without_grain_tfds_or_sentencepiece(tmp_path):
  out = subprocess.run(
      [sys.executable, "-c", WITHOUT_DATA_STACK, "--config=configs/mmr.py:fast,tiny",
       "--config.mesh.num_devices=1", "--config.data.text_seq_len=8",
       "--config.model.dtype=float32", "--steps=1", "--warmup=0", "--decode=greedy",
       "--decode_batch=2", "--decode_repeats=1", f"--out={tmp_path / 'bench.json'}"],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  written = json.loads((tmp_path / "bench.json").read_text())
  assert written == json.loads(out.stdout)
  assert written["train"]["images_per_s"] > 0 and written["decode"]["greedy"]["steps_run"] >= 1
