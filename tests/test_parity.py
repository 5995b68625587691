"""The parity tool: its helpers without torch; the whole comparison where torch and the
reference code are available (MICAR_REFERENCE_SRC=checkout, slow)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from micar_jax import errors
from micar_jax.tools import parity, parity_train, torch_reference

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_same_generation():
  ours = np.array([[1, 5, 2, 0, 0], [1, 2, 2, 0, 0]])
  # The reference stopped after step 1 (both rows <eos>) and padded to 4 columns.
  assert parity.same_generation(np.array([[1, 5, 2, 0], [1, 2, 2, 0]]), ours) == (True, "")
  same, detail = parity.same_generation(np.array([[1, 5, 2, 0], [1, 3, 2, 0]]), ours)
  assert not same and "image 1, position 1: reference 3, ours 2" in detail
  same, detail = parity.same_generation(np.array([[1, 5], [1, 2]]), ours)
  assert not same and "continues" in detail
  full = np.array([[1, 5, 6, 7, 8]])
  assert parity.same_generation(full, full) == (True, "")


def test_random_inputs_pad_only_the_last_row():
  images, ids, pad_mask = torch_reference.random_inputs(2, 16, 8, 20, seed=0)
  assert images.shape == (2, 3, 16, 16)
  assert np.all(ids[:, 0] == parity.SOS)
  assert np.all(pad_mask[0]) and pad_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
  assert ids[1, 3] == parity.EOS


def test_backbone_must_be_the_references(load_config):
  with pytest.raises(errors.UserError, match="the reference's backbone is a ResNet-101"):
    torch_reference.build_reference("/nonexistent", load_config("configs/covctr.py:tiny"), 10, 0)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_missing_torch_is_one_clear_line(load_config):
  with pytest.raises(errors.UserError, match="the parity check needs"):
    torch_reference.build_reference("/nonexistent", load_config("configs/covctr.py"), 10, 0)


needs_reference = pytest.mark.skipif(
    not os.environ.get("MICAR_REFERENCE_SRC") or importlib.util.find_spec("torch") is None,
    reason="needs torch and MICAR_REFERENCE_SRC=<reference checkout>")


def test_train_batches_label_the_next_token():
  batches = parity_train.train_batches(2, 16, 8, 20, seed=0, steps=2)
  assert len(batches) == 2 and not np.array_equal(batches[0]["images"], batches[1]["images"])
  for b in batches:
    np.testing.assert_array_equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
    assert np.all(b["labels"][:, -1] == parity.PAD)


def test_relative_errors_are_per_tensor_and_worst_first():
  reference = {"a": np.array([1.0, -4.0]), "b": np.array([2.0, 2.0]), "zero": np.zeros(2)}
  ours = {"a": np.array([1.0, -3.0]), "b": np.array([2.0, 2.0]), "zero": np.array([0.0, 1e-3])}
  rows = parity_train.relative_errors(reference, ours)
  assert [r[0] for r in rows] == ["a", "zero", "b"]
  assert rows[0][1:] == (0.25, 1.0) and rows[1][1:] == (1e-3, 1e-3) and rows[2][1] == 0.0


@pytest.mark.parametrize("dtype,steps,match", [("bfloat16", 1, "float32 or float64"),
                                               ("float64", 0, "must be >= 1")])
def test_train_comparison_rejects_bad_settings(dtype, steps, match, load_config):
  config = load_config("configs/covctr.py:tiny")
  with pytest.raises(errors.UserError, match=match):
    parity_train.compare_training("/nonexistent", config, 32, 2, 10, 0, steps, dtype, 1e-9)


@pytest.mark.slow
@needs_reference
def test_small_model_matches_the_reference(capsys, load_config):
  config = load_config("configs/covctr.py")
  m = config.model
  m.d_v, m.d_model, m.d_latent, m.d_ff, m.num_heads = 64, 64, 96, 128, 4
  m.qk_nope_dim, m.qk_rope_dim, m.num_layers, m.num_experts = 8, 16, 1, 4
  config.data.text_seq_len = 12
  ok = parity.compare(os.environ["MICAR_REFERENCE_SRC"], config, image_size=32, batch=2,
                      vocab_size=40, decode_len=0, seed=3, tolerance=1e-4)
  out = capsys.readouterr().out
  assert ok, out
  assert "token-identical to the reference beam_search: yes" in out


@pytest.mark.slow
@needs_reference
def test_float64_train_steps_match_the_reference():
  # A subprocess: jax_enable_x64 is process-wide and would leak into other tests.
  model = {"d_v": 64, "d_model": 64, "d_latent": 96, "d_ff": 128, "num_heads": 4,
           "qk_nope_dim": 8, "qk_rope_dim": 16, "num_layers": 1, "num_experts": 4}
  cmd = [sys.executable, "-m", "micar_jax.tools.parity",
         f"--reference_src={os.environ['MICAR_REFERENCE_SRC']}",
         f"--config={os.path.join(ROOT, 'configs', 'covctr.py')}",
         *(f"--config.model.{k}={v}" for k, v in model.items()),
         "--config.data.text_seq_len=12", "--image_size=64", "--batch=2", "--vocab_size=40",
         "--seed=3", "--train_steps=2", "--train_tolerance=1e-9", "--train_noise_floor"]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  report = json.loads(next(line[len("JSON "):] for line in proc.stdout.splitlines()
                           if line.startswith("JSON ")))
  assert report["dtype"] == "float64" and [s["step"] for s in report["steps"]] == [1, 2]
  for step in report["steps"]:
    # The loss agrees to float64 rounding; tensors within 10x the reference's own
    # spread under another convolution summation order (channels-last; train-mode
    # BatchNorm on 2x2 maps amplifies it) and
    # never beyond 1e-6 (float32 rounding anywhere would show as ~1e-3).
    assert step["loss_rel_diff"] <= 1e-10, step
    floor = step["noise_floor"]["max_rel_err"]
    assert step["max_rel_err"] <= min(1e-6, max(1e-9, 10 * floor)), step
