"""micar_jax.data.batch_spec: one batch contract for the pipeline, init, compiling and padding."""

import jax
import numpy as np
import pytest

from micar_jax.config import defaults
from micar_jax.core import run as run_lib
from micar_jax.core import sharding
from micar_jax.data import batch_spec, sources, synthetic
from micar_jax.data import input_pipeline as ip
from micar_jax.data import tokenizer as tokenizer_lib
from micar_jax.models import partitioning


def spec_of(views=1, batch=4):
  c = defaults.tiny(defaults.base_config())
  c.data.num_views, c.data.text_seq_len, c.train.batch_size = views, 9, batch
  return batch_spec.BatchSpec.from_config(c)


@pytest.mark.parametrize("views, images", [(1, (4, 32, 32, 3)), (2, (4, 2, 32, 32, 3))])
def test_shapes_of_one_and_two_views(views, images):
  spec = spec_of(views)
  assert spec.shapes() == {
      "images": (images, np.float32), "input_ids": ((4, 9), np.int32),
      "pad_mask": ((4, 9), np.int32), "labels": ((4, 9), np.int32),
      "valid": ((4,), np.bool_), "index": ((4,), np.int32)}
  dummy_images, dummy_ids = spec.dummy()
  assert dummy_images.shape == (1,) + images[1:] and dummy_ids.shape == (1, 9)
  assert not np.any(dummy_images) and dummy_ids.dtype == np.int32


def test_the_text_length_is_the_tokenizers():
  c = defaults.tiny(defaults.base_config())
  tok = tokenizer_lib.WordTokenizer({"<pad>": 0, "<sos>": 1, "<eos>": 2, "<unk>": 3}, 7)
  spec = batch_spec.BatchSpec.from_config(c, tok, batch_size=3)
  assert (spec.batch_size, spec.image_size, spec.text_seq_len) == (3, c.data.image_size, 7)


def test_abstract_arrays_carry_the_sharding():
  c = defaults.tiny(defaults.base_config())
  for axis in partitioning.MESH_AXES:
    c.mesh[axis] = 1
  c.mesh.data, c.mesh.expert = 2, 2
  mesh = sharding.make_mesh(c, jax.devices()[:4])
  spec = spec_of(batch=8)
  abstract = spec.abstract(sharding.batch_sharding(mesh))
  assert list(abstract) == list(batch_spec.BATCH_KEYS)
  for name, (shape, dtype) in spec.shapes().items():
    assert (abstract[name].shape, abstract[name].dtype) == (shape, dtype)
    assert abstract[name].sharding == sharding.batch_sharding(mesh)
  assert spec.abstract(keys=("images",))["images"].sharding is None


def test_random_batches_are_full_length_and_seeded():
  spec = spec_of(views=2)
  a, b = spec.random(13, seed=3), spec.random(13, seed=3)
  assert all(np.array_equal(a[k], b[k]) for k in batch_spec.MODEL_KEYS)
  assert a["images"].shape == (4, 2, 32, 32, 3) and a["images"].dtype == np.float32
  assert a["input_ids"].min() >= 4 and a["input_ids"].max() < 13
  np.testing.assert_array_equal(a["input_ids"][:, 1:], a["labels"][:, :-1])
  np.testing.assert_array_equal(a["pad_mask"], 1)
  assert not np.array_equal(a["images"], spec.random(13, seed=4)["images"])


def test_the_divisibility_problem_names_the_batch_and_the_shards():
  assert spec_of(batch=8).divisibility_problem(4) is None
  assert spec_of(batch=6).divisibility_problem(4) == (
      "train.batch_size=6 does not split over the mesh's 4 batch shards (mesh data x fsdp x "
      "expert); use a multiple of it")
  assert batch_spec.split_problem(6, 3, "x") is None


@pytest.mark.parametrize("rows, shards, processes, padded", [
    (3, 4, 1, 4), (4, 4, 1, 4), (5, 4, 1, 8), (3, 4, 2, 4), (3, 3, 2, 3), (1, 1, 4, 1)])
def test_eval_padding_appends_invalid_zero_rows(rows, shards, processes, padded):
  local = {"images": np.ones((rows, 2, 2, 3), np.float32), "valid": np.ones(rows, bool)}
  out = batch_spec.pad_rows(local, shards, processes)
  assert batch_spec.padded_rows(rows, shards, processes) == padded
  assert out["images"].shape == (padded, 2, 2, 3) and out["images"].dtype == np.float32
  np.testing.assert_array_equal(out["valid"], [True] * rows + [False] * (padded - rows))
  np.testing.assert_array_equal(out["images"][rows:], 0.0)
  assert (padded * processes) % shards == 0
  if processes == 1:
    assert spec_of(batch=rows).padded(shards).batch_size == padded


def test_a_pipeline_batch_matches_the_spec_and_the_compiled_batch(tmp_path, tiny_config):
  config = tiny_config(tmp_path)
  run = run_lib.Run(config, str(tmp_path / "run"))
  host = next(ip.make_train_iterator(config, run.tokenizer))
  run.batch_spec.check(host)
  real = run.put(host, pad=False)
  abstract = run.batch_spec.abstract(run.batch_sharding)
  assert set(abstract) == set(real)
  for key, value in real.items():
    assert (abstract[key].shape, abstract[key].dtype) == (value.shape, value.dtype), key
    assert abstract[key].sharding == value.sharding


def test_a_mismatched_batch_is_caught():
  spec = spec_of()
  good = spec.zeros()
  spec.check(good)
  with pytest.raises(ValueError, match=r"images float32\[4, 16, 16, 3\], expected "
                                       r"float32\[4, 32, 32, 3\]"):
    spec.check(dict(good, images=np.zeros((4, 16, 16, 3), np.float32)))
  with pytest.raises(ValueError, match=r"input_ids int64\[4, 9\], expected int32"):
    spec.check(dict(good, input_ids=np.zeros((4, 9), np.int64)))
  with pytest.raises(ValueError, match="valid missing; extra unexpected"):
    spec.check(dict({k: v for k, v in good.items() if k != "valid"}, extra=np.zeros(4)))


class _WideTokenizer(tokenizer_lib.WordTokenizer):
  """Encodes to int64: a pipeline bug the spec check must stop."""

  def encode(self, report):
    return tuple(a.astype(np.int64) for a in super().encode(report))


def test_the_pipeline_refuses_batches_that_do_not_match(tmp_path):
  c = defaults.base_config()
  c.dataset, c.data_dir = "synthetic", str(tmp_path / "syn")
  synthetic.generate(c.data_dir, (8, 4, 4), 0, 20)
  c.data.image_size, c.data.resize_size, c.data.text_seq_len = 16, 18, 12
  c.train.batch_size = 4
  tok = tokenizer_lib.WordTokenizer.build(sources.split_reports(c, "train"), 1, 12)
  next(ip.make_train_iterator(c, tok))
  wide = _WideTokenizer(tok.token2id, 12)
  with pytest.raises(ValueError, match="input_ids int64"):
    next(ip.make_train_iterator(c, wide))
