"""Tests for micar_jax.metrics.ratescore (optional; only its skip paths here)."""

import importlib.util

import pytest

from micar_jax.metrics import ratescore


def test_unconfigured_is_skipped():
  for folder in (None, ""):
    assert ratescore.ratescore_scores(["a"], ["a"], folder) == (
        {}, {"ratescore": "no local RaTEScore model folder configured"})


def test_missing_model_folder_is_named(tmp_path):
  (tmp_path / ratescore.NER_MODEL).mkdir()
  values, skipped = ratescore.ratescore_scores(["a"], ["a"], tmp_path)
  assert values == {}
  assert skipped == {"ratescore": f"{tmp_path} lacks model folder(s) {ratescore.ENCODER_MODEL}"}


@pytest.mark.skipif(importlib.util.find_spec("RaTEScore") is not None, reason="RaTEScore is installed")
def test_uninstalled_package_is_skipped(tmp_path):
  for name in (ratescore.NER_MODEL, ratescore.ENCODER_MODEL):
    (tmp_path / name).mkdir()
  values, skipped = ratescore.ratescore_scores(["a"], ["a"], tmp_path)
  assert values == {}
  assert skipped["ratescore"].startswith("RaTEScore cannot be imported (")
