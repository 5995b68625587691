"""Tests for micar_jax.data.tokenizer: reference vocabulary, sequences, decoding."""

import json
import os
import pickle

import numpy as np
import pytest

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.data import tokenizer as tl

# The authors' released token2id.json files (not shipped in the repo); the test skips without them.
OFFICIAL = os.environ.get("MICAR_OFFICIAL_VOCAB", os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "reference", "official_vocab"))
REPORTS = ["b a a .", "c a b .", "a d b .", "zz a ."]


def _word(seq_len=8):
  return tl.WordTokenizer.build(REPORTS, min_frequency=2, text_seq_len=seq_len)


def test_vocabulary_ids_sorted_and_thresholded():
  tok = _word()
  # Counts: a 5, . 4, b 3, c 1, d 1, zz 1; min 2 keeps ". a b" (code-point order).
  assert tok.token2id == {"<pad>": 0, "<sos>": 1, "<eos>": 2, "<unk>": 3, ".": 4, "a": 5, "b": 6}
  assert tok.vocab_size == 7


def test_encode_matches_reference_layout():
  tok = _word(seq_len=8)
  input_ids, pad_mask, labels = tok.encode("a c b .")
  np.testing.assert_array_equal(input_ids, [1, 5, 3, 6, 4, 2, 0, 0])
  np.testing.assert_array_equal(labels, [5, 3, 6, 4, 2, 0, 0, 0])
  np.testing.assert_array_equal(pad_mask, [1, 1, 1, 1, 1, 1, 0, 0])
  assert input_ids.dtype == labels.dtype == pad_mask.dtype == np.int32


@pytest.mark.parametrize("report,inputs,labels", [
    ("", [1, 2, 0, 0, 0], [2, 0, 0, 0, 0]),
    ("a b a", [1, 5, 6, 5, 2], [5, 6, 5, 2, 0]),  # exactly L - 2 tokens
    ("a b a b a .", [1, 5, 6, 5, 2], [5, 6, 5, 2, 0]),  # truncated to L - 2
    ("  a\tb\n", [1, 5, 6, 2, 0], [5, 6, 2, 0, 0]),  # any whitespace splits
])
def test_encode_edge_cases(report, inputs, labels):
  input_ids, pad_mask, label_ids = _word(seq_len=5).encode(report)
  np.testing.assert_array_equal(input_ids, inputs)
  np.testing.assert_array_equal(label_ids, labels)
  np.testing.assert_array_equal(pad_mask, np.array(inputs) != 0)


def test_decode_reference_keeps_words_after_eos_and_unk():
  tok = _word()
  ids = [1, 5, 3, 2, 6, 0, 4, 2]
  assert tok.decode(ids) == "a <unk> b ."
  assert tok.decode_clean(ids) == "a <unk>"
  assert tok.decode(np.array([0, 0])) == ""
  # References are decoded from labels: truncation and <unk> survive.
  assert tok.decode(tok.encode("a q b a b")[2]) == "a <unk> b a b"


def test_save_load_roundtrip(tmp_path):
  tok = _word()
  tok.save(tmp_path / "token2id.json")
  again = tl.WordTokenizer.load(tmp_path / "token2id.json", 8)
  assert again.token2id == tok.token2id
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_bad_vocabulary_rejected(tmp_path):
  (tmp_path / "v.json").write_text(json.dumps({"<pad>": 1, "<sos>": 0, "<eos>": 2, "<unk>": 3}))
  with pytest.raises(errors.UserError, match="<pad>"):
    tl.WordTokenizer.load(tmp_path / "v.json", 8)


@pytest.mark.parametrize("text,message", [
    ('["<pad>", "<sos>"]', "holds a JSON list; expected an object"),
    ("<pad> 0\n<sos> 1\n", "is not JSON"),
    ('{"<pad>": "zero"}', "1 entries have no integer id"),
])
def test_a_malformed_vocabulary_file_is_one_line_naming_it(tmp_path, text, message):
  path = tmp_path / "token2id.json"
  path.write_text(text)
  with pytest.raises(errors.UserError, match=message) as caught:
    tl.WordTokenizer.load(path, 8)
  assert str(path) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name,size", [("covctr", 229), ("mmretinal", 2046),
                                       ("pgross", 1679), ("roco", 16740)])
def test_official_vocabularies_load(name, size):
  path = os.path.join(OFFICIAL, f"{name}.token2id.json")
  if not os.path.exists(path):
    pytest.skip("official vocabularies not present")
  tok = tl.WordTokenizer.load(path, 60)
  assert tok.vocab_size == size
  assert tok.decode(tok.encode(" ".join(list(tok.token2id)[4:20]))[2]) == " ".join(
      list(tok.token2id)[4:20])


def _write_split(data_dir, reports):
  os.makedirs(data_dir / "images", exist_ok=True)
  (data_dir / "images" / "x.png").write_bytes(b"")
  with open(data_dir / "train.jsonl", "w") as f:
    for r in reports:
      f.write(json.dumps({"image": str(data_dir / "images" / "x.png"), "report": r}) + "\n")


def test_load_or_build_writes_then_reads_workdir(tmp_path):
  _write_split(tmp_path / "data", REPORTS)
  config = defaults.base_config()
  config.data.min_frequency = 2
  config.data.text_seq_len = 8
  tok = tl.load_or_build_tokenizer(config, tmp_path / "data", tmp_path / "work")
  assert (tmp_path / "work" / "token2id.json").exists()
  assert tok.vocab_size == 7
  # Present vocab wins over the data (rebuilding with min 1 would give 10).
  config.data.min_frequency = 1
  assert tl.load_or_build_tokenizer(config, tmp_path / "data", tmp_path / "work").vocab_size == 7
  config.data.vocab_path = str(tmp_path / "missing.json")
  with pytest.raises(errors.UserError, match="vocab_path"):
    tl.load_or_build_tokenizer(config, tmp_path / "data", tmp_path / "work")


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_interface(tmp_path, model_type):
  reports = [f"the optic disc is {w} with {v} hemorrhages ." for w in ("pale", "swollen", "normal")
             for v in ("one", "two", "many")] * 5
  tok = tl.SentencePieceTokenizer.build(reports, 500, model_type, text_seq_len=40)
  assert tok.vocab_size < 500  # hard_vocab_limit=False shrinks it
  assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<sos>", "<eos>", "<unk>"]
  input_ids, pad_mask, labels = tok.encode(reports[0])
  n = int(pad_mask.sum()) - 2
  assert input_ids[0] == 1 and input_ids[n + 1] == 2 and labels[n] == 2 and labels[n + 1] == 0
  np.testing.assert_array_equal(input_ids[1:n + 1], labels[:n])
  assert tok.decode(labels) == reports[0]
  assert tok.decode_clean(np.concatenate([labels[:n + 1], input_ids[1:4]])) == reports[0]
  tok.save(tmp_path / "sp.model")
  again = pickle.loads(pickle.dumps(tl.SentencePieceTokenizer.load(tmp_path / "sp.model", 40)))
  np.testing.assert_array_equal(again.encode(reports[3])[0], tok.encode(reports[3])[0])
