"""Tests for micar_jax.data.input_pipeline and sources: batches, order, resume, eval."""

import json
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.data import input_pipeline as ip
from micar_jax.data import jsonl, predict_inputs, sources, synthetic
from micar_jax.data import tokenizer as tl


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("d") / "syn")
  synthetic.generate(path, (22, 10, 3), 0, 20)
  return path


def _config(data_dir, **train):
  c = defaults.base_config()
  c.dataset, c.data_dir = "synthetic", data_dir
  c.data.image_size, c.data.resize_size, c.data.text_seq_len = 16, 18, 12
  c.train.batch_size, c.train.epochs, c.eval.batch_size = 4, 3, 4
  for k, v in train.items():
    setattr(c.train, k, v)
  return c


def _tok(c):
  return tl.WordTokenizer.build(sources.split_reports(c, "train"), 1, c.data.text_seq_len)


def test_train_batch_shapes_dtypes_and_epochs(data_dir):
  c = _config(data_dir)
  tok = _tok(c)
  it = ip.make_train_iterator(c, tok)
  steps = ip.steps_per_epoch(c, 22)
  assert steps == 5
  epochs = [[next(it) for _ in range(steps)] for _ in range(3)]
  with pytest.raises(StopIteration):
    next(it)
  b = epochs[0][0]
  assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
      "images": ((4, 16, 16, 3), np.float32), "input_ids": ((4, 12), np.int32),
      "pad_mask": ((4, 12), np.int32), "labels": ((4, 12), np.int32),
      "valid": ((4,), np.bool_), "index": ((4,), np.int32)}
  rows = jsonl.read_split(data_dir, "train")
  np.testing.assert_array_equal(b["input_ids"][0], tok.encode(rows[b["index"][0]]["report"])[0])
  orders = [np.concatenate([x["index"] for x in e]) for e in epochs]
  for order in orders:
    assert len(set(order)) == 20  # 22 rows, the partial batch is dropped
  assert not np.array_equal(orders[0], orders[1])
  # Deterministic from the seed; start_epoch jumps to the same batches.
  again = ip.make_train_iterator(c, tok, start_epoch=1)
  np.testing.assert_array_equal(next(again)["images"], epochs[1][0]["images"])


def test_keep_last_partial_batch_pads_with_invalid_rows(data_dir):
  c = _config(data_dir, keep_last_partial_batch=True, epochs=1)
  it = ip.make_train_iterator(c, _tok(c))
  batches = list(it)
  assert len(batches) == ip.steps_per_epoch(c, 22) == 6
  valid = np.concatenate([b["valid"] for b in batches])
  idx = np.concatenate([b["index"] for b in batches])
  assert valid.sum() == 22 and sorted(idx[valid]) == list(range(22))
  assert (idx[~valid] == -1).all() and (batches[-1]["images"][~batches[-1]["valid"]] == 0).all()


def test_resume_from_state_is_exact(data_dir, tmp_path):
  c = _config(data_dir)
  c.data.augment = True
  tok = _tok(c)
  it = ip.make_train_iterator(c, tok)
  for _ in range(7):  # into the second epoch
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]
  resumed = ip.make_train_iterator(c, tok, state=state)
  # Through orbax too, as the trainer will checkpoint it.
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(resumed)))
  mngr.wait_until_finished()
  restored = ip.make_train_iterator(c, tok)
  mngr.restore(7, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  for want in expected:
    for it2 in (resumed, restored):
      got = next(it2)
      for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_processes_split_the_global_batch(data_dir, monkeypatch):
  c = _config(data_dir)
  tok = _tok(c)
  whole = next(ip.make_train_iterator(c, tok))["index"]
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  parts = []
  for p in range(2):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    parts.append(next(ip.make_train_iterator(c, tok))["index"])
  assert parts[0].shape == (2,)
  np.testing.assert_array_equal(np.concatenate(parts), whole)
  c.train.batch_size = 3
  with pytest.raises(errors.ConfigError, match="divisible"):
    ip.make_train_iterator(c, tok)


def test_eval_batches_score_each_example_once_in_order(data_dir):
  c = _config(data_dir)
  c.eval.batch_size = 4
  ds, rows = ip.make_eval_batches(c, _tok(c), "val")
  for _ in range(2):  # iterable more than once
    batches = list(ds)
    assert len(batches) == 3 and all(b["images"].shape == (4, 16, 16, 3) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    idx = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(idx[valid], np.arange(10))
    assert valid.sum() == len(rows) == 10


def test_bad_rows_are_skipped_or_invalid(tmp_path, data_dir):
  good = jsonl.read_split(data_dir, "train")
  (tmp_path / "corrupt.png").write_bytes(b"garbage")
  lines = [{"image": good[0]["image"], "report": "a ."},
           {"image": str(tmp_path / "missing.png"), "report": "b ."},
           {"image": str(tmp_path / "corrupt.png"), "report": "c ."},
           {"image": good[1]["image"], "report": "d ."}]
  with open(tmp_path / "val.jsonl", "w") as f:
    f.write("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
  rows = jsonl.read_split(tmp_path, "val")
  assert [r["report"] for r in rows] == ["a .", "c .", "d ."]
  c = _config(str(tmp_path))
  c.dataset = "covctr"
  ds, _ = ip.make_eval_batches(c, _tok(_config(data_dir)), "val")
  (b,) = list(ds)
  np.testing.assert_array_equal(b["valid"], [True, False, True, False])


def test_missing_data_names_prepare_command(tmp_path):
  c = _config(str(tmp_path / "nowhere"))
  c.dataset = "roco"
  with pytest.raises(sources.MissingDataError, match="python -m micar_jax.data.prepare"):
    ip.make_eval_batches(c, tl.WordTokenizer.build([], 1, 12), "test")


def test_two_views_stack(tmp_path, data_dir):
  good = jsonl.read_split(data_dir, "train")
  with open(tmp_path / "test.jsonl", "w") as f:
    for i in range(3):
      f.write(json.dumps({"image": [good[i]["image"], good[i + 1]["image"]],
                          "report": good[i]["report"]}) + "\n")
  c = _config(str(tmp_path))
  c.dataset, c.data.num_views = "iu_xray", 2
  (b,) = list(ip.make_eval_batches(c, _tok(_config(data_dir)), "test")[0])
  assert b["images"].shape == (4, 2, 16, 16, 3)
  assert not np.array_equal(b["images"][0, 0], b["images"][0, 1])


def test_predict_batches_from_directory(tmp_path, data_dir):
  for r in jsonl.read_split(data_dir, "val")[:3]:
    os.symlink(r["image"], tmp_path / os.path.basename(r["image"]))
  (tmp_path / "broken.png").write_bytes(b"x")
  (tmp_path / "notes.txt").write_text("ignored")
  c = _config(data_dir)
  c.eval.batch_size = 2
  batches = list(predict_inputs.predict_batches(c, str(tmp_path)))
  assert [b["valid"].tolist() for b in batches] == [[True, True], [True, False]]
  assert [len(b["paths"]) for b in batches] == [2, 1]
  assert batches[1]["images"].shape == (2, 16, 16, 3) and (batches[1]["images"][1] == 0).all()


@pytest.mark.slow
def test_worker_processes_give_same_batches_and_resume(data_dir):
  c = _config(data_dir)
  tok = _tok(c)
  plain = next(ip.make_train_iterator(c, tok))["index"]
  c.data.worker_count = 2
  it = ip.make_train_iterator(c, tok)
  first = [next(it)["index"] for _ in range(3)]
  np.testing.assert_array_equal(first[0], plain)
  state = it.get_state()
  want = [next(it)["index"] for _ in range(3)]
  it.close()
  it2 = ip.make_train_iterator(c, tok, state=state)
  np.testing.assert_array_equal([next(it2)["index"] for _ in range(3)], want)
  it2.close()
