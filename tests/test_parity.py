"""The parity tool: its helpers without torch; the whole comparison where torch and the
reference code are available (MICAR_REFERENCE_SRC=checkout, slow)."""

import importlib.util
import os

import numpy as np
import pytest

from micar_jax import errors
from micar_jax.tools import parity

ROOT = os.path.join(os.path.dirname(__file__), "..")


def covctr(arg=""):
  """configs/covctr.py (a file, not a package)."""
  spec = importlib.util.spec_from_file_location(
      "covctr_config", os.path.join(ROOT, "configs", "covctr.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


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
  images, ids, pad_mask = parity.random_inputs(2, 16, 8, 20, seed=0)
  assert images.shape == (2, 3, 16, 16)
  assert np.all(ids[:, 0] == parity.SOS)
  assert np.all(pad_mask[0]) and pad_mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
  assert ids[1, 3] == parity.EOS


def test_backbone_must_be_the_references():
  with pytest.raises(errors.UserError, match="the reference's backbone is a ResNet-101"):
    parity.build_reference("/nonexistent", covctr("tiny"), 10, 0)


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_missing_torch_is_one_clear_line():
  with pytest.raises(errors.UserError, match="the parity check needs"):
    parity.build_reference("/nonexistent", covctr(), 10, 0)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MICAR_REFERENCE_SRC")
                    or importlib.util.find_spec("torch") is None,
                    reason="needs torch and MICAR_REFERENCE_SRC=<reference checkout>")
def test_small_model_matches_the_reference(capsys):
  config = covctr()
  m = config.model
  m.d_v, m.d_model, m.d_latent, m.d_ff, m.num_heads = 64, 64, 96, 128, 4
  m.qk_nope_dim, m.qk_rope_dim, m.num_layers, m.num_experts = 8, 16, 1, 4
  config.data.text_seq_len = 12
  ok = parity.compare(os.environ["MICAR_REFERENCE_SRC"], config, image_size=32, batch=2,
                      vocab_size=40, decode_len=0, seed=3, tolerance=1e-4)
  out = capsys.readouterr().out
  assert ok, out
  assert "token-identical to the reference beam_search: yes" in out
