"""Tests for micar_jax.data.tfds_builders: array_record round trip without TF."""

import json
import sys

import numpy as np
import pytest

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.data import input_pipeline as ip
from micar_jax.data import jsonl, sources, synthetic, tfds_builders
from micar_jax.data import tokenizer as tl


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("t")
  synthetic.generate(str(root / "syn"), (9, 5, 3), 1, 20)
  tfds_builders.build("synthetic", str(root / "syn"), str(root / "tfds"))
  return root


def test_round_trip_keeps_order_and_bytes(built):
  for split, n in (("train", 9), ("val", 5), ("test", 3)):
    rows = tfds_builders.data_source("synthetic", split, str(built / "tfds"))
    want = jsonl.read_split(built / "syn", split)
    assert len(rows) == n
    for got, exp in zip(rows, want):
      assert got["report"] == exp["report"]
      assert got["image"] == open(exp["image"], "rb").read()
  assert "tensorflow" not in sys.modules


def test_pipeline_reads_tfds_like_jsonl(built):
  c = defaults.base_config()
  c.dataset, c.data_dir = "synthetic", str(built / "syn")
  c.data.image_size = c.data.resize_size = 16
  c.data.text_seq_len, c.eval.batch_size = 10, 4
  tok = tl.WordTokenizer.build(sources.split_reports(c, "train"), 1, 10)
  jsonl = list(ip.make_eval_batches(c, tok, "val")[0])
  c.data.source, c.data.tfds_data_dir = "tfds", str(built / "tfds")
  assert tl.WordTokenizer.build(sources.split_reports(c, "train"), 1, 10).token2id == tok.token2id
  from_tfds = list(ip.make_eval_batches(c, tok, "val")[0])
  for a, b in zip(jsonl, from_tfds, strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_two_view_dataset(built, tmp_path):
  rows = jsonl.read_split(built / "syn", "train")
  with open(tmp_path / "train.jsonl", "w") as f:
    for i in range(2):
      f.write(json.dumps({"image": [rows[i]["image"], rows[i + 1]["image"]],
                          "report": rows[i]["report"]}) + "\n")
  tfds_builders.build("iu_xray", str(tmp_path), str(tmp_path / "tfds"))
  got = tfds_builders.data_source("iu_xray", "train", str(tmp_path / "tfds"))
  assert len(got) == 2
  assert got[1]["image"] == [open(rows[1]["image"], "rb").read(), open(rows[2]["image"], "rb").read()]


def test_unbuilt_and_unknown_datasets(tmp_path):
  with pytest.raises(jsonl.MissingDataError, match="tfds_builders --dataset=covctr"):
    tfds_builders.data_source("covctr", "train", str(tmp_path))
  with pytest.raises(errors.ConfigError, match="no TFDS config"):
    tfds_builders.data_source("imagenet", "train", str(tmp_path))
