"""Tests for micar_jax.metrics.coco (pycocoevalcap 1.2 scorers)."""

import math
import shutil
import sys
import time

import pytest

from micar_jax import errors
from micar_jax.metrics import coco

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH")


@pytest.fixture
def no_java(monkeypatch, tmp_path):
  monkeypatch.setenv("PATH", str(tmp_path))


def test_bleu_epsilons_differ_from_nmt_only_at_zero_precision(no_java):
  # "no pneumothorax" vs "there is no pneumothorax": BP = exp(1 - 4/2);
  # p3, p4 have no n-grams, so pycocoevalcap's tiny/small = 1e-15/1e-9 = 1e-6
  # stands in for them where nmt gives exactly 0 (docs/metrics.md §3.2).
  values, _ = coco.coco_scores(["no pneumothorax"], ["there is no pneumothorax"])
  bp = math.exp(-1)
  expected = [bp, bp, bp * (1e-6) ** (1 / 3), bp * (1e-12) ** (1 / 4)]
  assert [values[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(expected, rel=1e-6)


def test_rouge_uses_beta_1_2_on_whitespace_tokens(no_java):
  # LCS("a b c d", "a b e") = 2: P = 2/4, R = 2/3,
  # F = (1 + 1.2^2) P R / (R + 1.2^2 P).
  values, _ = coco.coco_scores(["a b  c\nd"], ["a b e"])
  p, r = 0.5, 2 / 3
  assert values["rougeL"] == pytest.approx((1 + 1.44) * p * r / (r + 1.44 * p))


def test_tokenize_modes(no_java):
  # Whitespace keeps "clear." whole; jury tokens split it off.
  raw, _ = coco.coco_scores(["lungs clear."], ["lungs clear"])
  jury, _ = coco.coco_scores(["lungs clear."], ["lungs clear"], tokenize="jury")
  assert raw["bleu1"] == pytest.approx(0.5)
  assert jury["bleu1"] == pytest.approx(1.0)
  with pytest.raises(errors.ConfigError, match="tokenize='ptb'"):
    coco.coco_scores(["a"], ["a"], tokenize="ptb")


def test_cider_d_of_perfect_captions_is_ten(no_java):
  # Each hypothesis equals its reference and every sentence has 1..4-grams of
  # its own (idf > 0): cosine 1 and no length penalty for n = 1..4, times 10.
  sents = ["the heart size is normal", "small left pleural effusion seen", "no acute bony abnormality here"]
  values, _ = coco.coco_scores(sents, sents)
  assert values["cider"] == pytest.approx(10.0)
  assert values["bleu4"] == pytest.approx(1.0)


def test_without_java_meteor_is_skipped_with_a_reason(no_java):
  values, skipped = coco.coco_scores(["a b"], ["a b"])
  assert "meteor" not in values
  assert skipped == {"meteor": "java not found on PATH; METEOR 1.5 skipped"}


def test_empty_hypothesis_is_scored(no_java):
  values, _ = coco.coco_scores(["", "no effusion"], ["no effusion", "no effusion"])
  assert 0.0 < values["bleu1"] < 1.0
  assert values["rougeL"] == pytest.approx(0.5)


def test_without_pycocoevalcap_the_suite_is_skipped(monkeypatch):
  for name in ("pycocoevalcap", "pycocoevalcap.bleu.bleu"):
    monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
  assert coco.coco_scores(["a"], ["a"]) == ({}, {"*": "pycocoevalcap is not installed; coco suite skipped"})


def test_bad_pairs_raise():
  with pytest.raises(ValueError, match="no hypothesis"):
    coco.coco_scores([], [])


@needs_java
def test_java_meteor_bounds_and_newlines():
  values, skipped = coco.coco_scores(
      ["the heart size is normal .\nno effusion .", "pleural effusion", ""],
      ["the heart size is normal . no effusion .", "cardiomegaly", "no pneumothorax"])
  assert not skipped
  assert 0.0 < values["meteor"] < 1.0
  same, _ = coco.coco_scores(["the heart size is normal ."], ["the heart size is normal ."])
  unrelated, _ = coco.coco_scores(["pleural effusion"], ["cardiomegaly"])
  assert same["meteor"] > 0.9
  assert unrelated["meteor"] == 0.0


def _fake_java(tmp_path, body):
  java = tmp_path / "java"
  java.write_text("#!/bin/sh\n" + body + "\n")
  java.chmod(0o755)


@pytest.mark.parametrize("body,reason", [
    ("exit 3", "the JVM exited (code 3)"),
    ("exec /bin/sleep 30", "no progress for 1 s while waiting for a reply"),
    # Answers the first SCORE line, then dies mid-scoring.
    ("read line; echo '1 2 3'; read line; exit 1", "the JVM exited (code 1)"),
    # Answers every SCORE line, then garbage for EVAL.
    ("while read line; do echo 'not a number'; done", "unexpected reply 'not a number'"),
])
def test_dying_or_stalled_meteor_is_killed_and_skipped_in_time(no_java, tmp_path, caplog, body,
                                                               reason):
  _fake_java(tmp_path, body)
  start = time.monotonic()
  values, skipped = coco.coco_scores(["a b", "c"], ["a b", "d"], meteor_timeout_s=1.0)
  assert time.monotonic() - start < 10
  assert "meteor" not in values and values["bleu1"] > 0
  assert skipped["meteor"] == f"METEOR 1.5 failed and was skipped (MeteorError: {reason})"
  assert "coco/meteor skipped: METEOR 1.5 failed" in caplog.text
  assert coco._METEOR is None  # pylint: disable=protected-access


@needs_java
def test_real_meteor_runs_again_after_a_failure(tmp_path, monkeypatch):
  _fake_java(tmp_path, "exit 1")
  monkeypatch.setenv("PATH", str(tmp_path))
  assert "meteor" in coco.coco_scores(["a b"], ["a b"])[1]
  monkeypatch.undo()
  values, skipped = coco.coco_scores(["the heart is normal ."], ["the heart is normal ."])
  assert not skipped and values["meteor"] > 0.9
