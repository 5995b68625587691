"""Tests for micar_jax.metrics.reference (the jury-equivalent suite)."""

import json
import math
import os

import numpy as np
import pytest

from micar_jax import errors
from micar_jax.metrics import reference, wordnet


@pytest.fixture(scope="module")
def wn(tmp_path_factory):
  reader, reason = wordnet.load_wordnet(tmp_path_factory.mktemp("nltk_data"))
  if reader is None:
    pytest.skip(f"nltk WordNet unavailable: {reason}")
  return reader


def test_jury_tokenize_drops_punctuation_and_lowercases():
  assert reference.jury_tokenize("Heart size: <UNK> , normal .") == ["heart", "size", "unk", "normal"]
  assert reference.jury_tokenize("Left-sided PICC.\nNo effusion") == ["left", "sided", "picc", "no", "effusion"]
  assert reference.jury_tokenize(" . , ") == []


def test_bleu_hand_checked_single_pair():
  # hyp "the heart is normal" (4), ref "the heart size is normal" (5):
  # p1 = 4/4; bigrams "the heart", "heart is", "is normal" -> 2 of 3 in ref;
  # trigrams "the heart is", "heart is normal" -> 0 of 2, so BLEU-3/4 = 0
  # (no smoothing). BP = exp(1 - 5/4).
  bleu = reference.corpus_bleu([["the", "heart", "is", "normal"]],
                               [["the", "heart", "size", "is", "normal"]])
  bp = math.exp(-0.25)
  assert bleu == pytest.approx([bp, bp * math.sqrt(2 / 3), 0.0, 0.0], abs=1e-15)


def test_bleu_clips_counts_and_pools_the_corpus():
  # hyp "no no no effusion" vs ref "no effusion": "no" counts min(3, 1) = 1,
  # so p1 = 2/4; bigrams "no no" x2, "no effusion" -> p2 = 1/3; hyp longer, BP 1.
  single = reference.corpus_bleu([["no", "no", "no", "effusion"]], [["no", "effusion"]], max_order=2)
  assert single == pytest.approx([0.5, math.sqrt(0.5 / 3)], abs=1e-15)
  # Corpus BLEU pools counts (6/8 unigrams, 3/6 bigrams, lengths 8 vs 7), it is
  # not the mean of the sentence scores.
  pooled = reference.corpus_bleu(
      [["the", "heart", "is", "normal"], ["no", "no", "no", "effusion"]],
      [["the", "heart", "size", "is", "normal"], ["no", "effusion"]], max_order=2)
  assert pooled == pytest.approx([6 / 8, math.sqrt(6 / 8 * 3 / 6)], abs=1e-15)


def test_bleu_short_hypothesis_without_trigrams_is_zero():
  # docs/metrics.md §3.2: nmt gives e^-1 for B1/B2 and exactly 0 for B3/B4.
  bleu = reference.corpus_bleu([["no", "pneumothorax"]], [["there", "is", "no", "pneumothorax"]])
  assert bleu == pytest.approx([math.exp(-1), math.exp(-1), 0.0, 0.0], abs=1e-15)


def test_unk_matches_unk_after_tokenisation():
  scores = reference.reference_scores(["<unk> effusion ."], ["<UNK> effusion"])
  assert scores["bleu1"] == 1.0
  assert scores["rougeL"] == 1.0


def test_empty_hypotheses_score_zero_instead_of_dividing_by_zero():
  assert reference.corpus_bleu([[], []], [["a"], ["b", "c"]]) == [0.0] * 4
  scores = reference.reference_scores(["", " . "], ["no effusion .", "clear"])
  assert [scores[f"bleu{n}"] for n in range(1, 5)] == [0.0] * 4
  assert scores["rougeL"] == 0.0 and scores["score"] == 0.0


def test_empty_references_give_zero_not_an_error():
  assert reference.corpus_bleu([["a", "b"]], [[]]) == [0.0] * 4


@pytest.mark.parametrize("hyps,refs,match", [
    ([], [], "no hypothesis"),
    (["a"], ["a", "b"], "1 hypotheses but 2 references"),
    (["a", None], ["a", "b"], "pair 1 is not two strings"),
])
def test_bad_pairs_raise_one_line_errors(hyps, refs, match):
  with pytest.raises(ValueError, match=match):
    reference.reference_scores(hyps, refs)


def test_rouge_l_mean_option_is_the_lcs_f1_mean():
  # "the heart is normal" vs "heart size is normal": LCS 3 ("heart is normal"),
  # P = 3/4, R = 3/4 -> F 0.75; the second pair is identical -> 1.
  got = reference.rouge_l(["the heart is normal", "Clear."], ["heart size is normal", "clear"],
                          "mean")
  assert got == pytest.approx((0.75 + 1.0) / 2)


def report_pairs():
  path = os.path.join(os.path.dirname(__file__), "fixtures", "report_pairs.json")
  with open(path, encoding="utf-8") as f:
    pairs = json.load(f)
  return [p["hypothesis"] for p in pairs], [p["reference"] for p in pairs]


def jury_rouge_l(hypotheses, references):
  """jury 2.3.1's ROUGE-L after the reference's np.random.seed(123456), written out."""
  from rouge_score import rouge_scorer, scoring  # pylint: disable=g-import-not-at-top
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"],
                                    use_stemmer=False)
  aggregator = scoring.BootstrapAggregator()
  for hyp, ref in zip(hypotheses, references):
    scores = scorer.score(target=ref, prediction=hyp)
    aggregator.add_scores({k: s.fmeasure for k, s in scores.items()})
  state = np.random.get_state()
  np.random.seed(123456)
  try:
    return aggregator.aggregate()["rougeL"].mid
  finally:
    np.random.set_state(state)


def test_rouge_l_default_is_jurys_bootstrap_median_on_real_text():
  hyps, refs = report_pairs()
  want = jury_rouge_l(hyps, refs)
  np.random.seed(7)  # whatever ran before must not matter, nor be disturbed
  before = np.random.get_state()[1].copy()
  got = reference.reference_scores(hyps, refs)["rougeL"]
  assert got == want
  np.testing.assert_array_equal(np.random.get_state()[1], before)
  mean = reference.rouge_l(hyps, refs, "mean")
  assert got != mean and abs(got - mean) < 0.02


def test_unknown_rouge_aggregate_is_a_one_line_error():
  with pytest.raises(errors.ConfigError, match="eval.rouge_aggregate='median'"):
    reference.rouge_l(["a"], ["a"], "median")


def test_selection_score_formula_and_missing_meteor():
  assert reference.selection_score([0.4, 0.3, 0.2, 0.1], 0.5, 0.6) == pytest.approx(1.0 / 8 + 0.125 + 0.15)
  assert reference.selection_score([0.4, 0.3, 0.2, 0.1], 0.5, None) == pytest.approx(1.0 / 8 + 0.125)
  without = reference.reference_scores(["a b c"], ["a b d"])
  assert "meteor" not in without
  assert without["score"] == pytest.approx(sum(without[f"bleu{n}"] for n in range(1, 5)) / 8
                                           + without["rougeL"] / 4)


def test_meteor_hand_checked(wn):
  # Identical 4 tokens: m = 4, one chunk, P = R = 1 -> Fmean 1,
  # penalty 0.5 * (1/4)^3 -> 1 - 1/128.
  same = reference.meteor_mean([["the", "heart", "is", "normal"]], [["the", "heart", "is", "normal"]], wn)
  assert same == pytest.approx(1 - 0.5 / 64)
  # No shared word, stem or synonym -> 0.
  assert reference.meteor_mean([["cardiomegaly"]], [["pneumothorax"]], wn) == 0.0


def test_meteor_uses_wordnet_synonyms(wn):
  # "tumor" and "neoplasm" share a synset and survive Porter stemming, so all
  # three words align in one chunk: 1 - 0.5 * (1/3)^3.
  got = reference.meteor_mean([["a", "tumor", "seen"]], [["a", "neoplasm", "seen"]], wn)
  assert got == pytest.approx(1 - 0.5 / 27)
  full = reference.reference_scores(["a tumor, seen ."], ["A neoplasm seen"], wn)
  assert full["meteor"] == pytest.approx(got)
  assert full["score"] == pytest.approx(sum(full[f"bleu{n}"] for n in range(1, 5)) / 8
                                        + full["rougeL"] / 4 + full["meteor"] / 4)


@pytest.mark.parametrize("first", ["", " . , ", "<>"])
def test_a_first_hypothesis_without_words_scores_zero_without_sinking_rouge_l(first):
  # jury raises on these (empty/punctuation-only) or returns the integer 0 for the corpus.
  hyps, refs = report_pairs()
  got = reference.reference_scores([first] + hyps[1:], refs)["rougeL"]
  assert isinstance(got, float) and got > 0.3
  assert reference.rouge_l_f1([first], refs[:1]) == [0.0]
