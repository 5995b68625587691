"""Sentence-level scores: one per pair, and their mean is the corpus value."""

import numpy as np
import pytest

from micar_jax.metrics import scores, sentence

HYPS = ["the heart is normal .", "no effusion is seen", "large lesion in the left lung"]
REFS = ["the heart size is normal .", "there is no pleural effusion", "small lesion in the right lung"]


def test_means_of_sentence_scores_equal_the_corpus_values():
  per_pair = sentence.sentence_scores(HYPS, REFS, ("reference", "coco"), wordnet_dir=None)
  corpus = scores.compute_scores(HYPS, REFS, ("reference", "coco"), wordnet_dir=None,
                                 rouge_aggregate="mean").values
  assert len(per_pair) == 3
  for key in per_pair[0]:
    assert np.mean([p[key] for p in per_pair]) == pytest.approx(corpus[key], abs=1e-9), key
  assert {"ref/rougeL", "coco/cider"} <= set(per_pair[0])
  assert per_pair[1]["ref/rougeL"] < 1.0
  assert sentence.sentence_scores(HYPS[:1], HYPS[:1], ("reference",))[0]["ref/rougeL"] == 1.0


def test_unaligned_pairs_are_rejected():
  with pytest.raises(ValueError):
    sentence.sentence_scores(HYPS, REFS[:2])
