"""Validation loss over a split (the reference's mean of batch means, or the token mean),
stored image paths, and the console's score table."""

import json
import os
import shutil

import flax.linen as nn
import jax
import numpy as np
import pytest

from micar_jax import errors, evaluate
from micar_jax.config import defaults
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.metrics import scores as scores_lib
from micar_jax.models import model as model_lib
from micar_jax.training import steps

VOCAB, SEQ = 20, 8


@pytest.fixture(scope="module")
def eval_setup():
  c = defaults.tiny(defaults.base_config())
  c.data.text_seq_len = SEQ
  mc = model_lib.ModelConfig.from_config(c, VOCAB)
  init = state_lib.make_variables_init_fn(mc, batch_spec.BatchSpec.from_config(c))
  variables = nn.meta.unbox(jax.jit(init)(jax.random.PRNGKey(0)))
  return jax.jit(steps.make_eval_step(mc, c)), variables


def batch(seed, valid_rows, lengths):
  """4 rows; rows >= valid_rows are padding (zero images and ids, garbage labels)."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(4, VOCAB, size=(4, SEQ)).astype(np.int32)
  for row, n in enumerate(lengths):
    ids[row, n:] = 0
  images = rng.randn(4, 32, 32, 3).astype(np.float32)
  valid = np.arange(4) < valid_rows
  images[~valid], ids[~valid] = 0.0, 0
  labels = np.zeros_like(ids)
  labels[:, :-1] = ids[:, 1:]  # a row of n ids has n - 1 label tokens
  # Labels a padding row must never contribute, whatever they hold.
  labels[~valid] = rng.randint(4, VOCAB, size=(int((~valid).sum()), SEQ))
  return {"images": images, "input_ids": ids, "pad_mask": (ids != 0).astype(np.int32),
          "labels": labels, "valid": valid}


def test_validation_loss_is_the_reference_mean_of_batch_means(eval_setup):
  eval_step, variables = eval_setup
  # Batches of very different token counts, so the two means differ.
  batches = [batch(0, 4, [8, 8, 8, 8]), batch(1, 2, [2, 3, 8, 8])]
  outs = [jax.device_get(eval_step(variables, b)) for b in batches]
  per_batch = [float(o["ce_sum"]) / float(o["tokens"]) + float(o["aux"]) for o in outs]
  assert [float(o["tokens"]) for o in outs] == [28.0, 3.0]  # padding rows' labels excluded
  by_batch = evaluate.validation_loss(eval_step, variables, batches, lambda b: b)
  assert by_batch == pytest.approx(np.mean(per_batch), rel=1e-6)
  by_token = evaluate.validation_loss(eval_step, variables, batches, lambda b: b, "token")
  want = (sum(float(o["ce_sum"]) for o in outs) / 31.0 + np.mean([float(o["aux"]) for o in outs]))
  assert by_token == pytest.approx(want, rel=1e-6)
  assert abs(by_batch - by_token) > 1e-4
  # An all-padding batch counts in neither mean.
  assert evaluate.validation_loss(eval_step, variables, batches + [batch(2, 0, [8] * 4)],
                                  lambda b: b) == pytest.approx(by_batch, rel=1e-6)


def test_unknown_mean_is_a_one_line_error(eval_setup):
  with pytest.raises(errors.ConfigError, match="eval.val_loss_mean='median'"):
    evaluate.validation_loss(*eval_setup, [], lambda b: b, "median")


def test_stored_image_paths_are_relative_to_the_run_or_data_folder(tmp_path):
  run_dir, data_dir, elsewhere = tmp_path / "run", tmp_path / "data", tmp_path / "mine"
  for folder in (run_dir / "data" / "images", data_dir / "images", elsewhere):
    folder.mkdir(parents=True)
  inside_run = run_dir / "data" / "images" / "a.png"
  inside_data = data_dir / "images" / "b.png"
  outside = elsewhere / "c.png"
  for path in (inside_run, inside_data, outside):
    path.write_bytes(b"png")
  stored = [evaluate.stored_image(str(p), str(run_dir), str(data_dir))
            for p in (inside_run, inside_data, outside)]
  assert stored == [os.path.join("data", "images", "a.png"), os.path.join("images", "b.png"),
                    str(outside)]
  assert evaluate.stored_image([str(inside_data)], str(run_dir), str(data_dir)) == [stored[1]]
  # The run folder moves (its synthetic data with it); the dataset stays where the config says.
  moved = tmp_path / "moved"
  shutil.move(str(run_dir), str(moved))
  assert evaluate.resolve_image(stored[0], str(moved), str(data_dir)) == str(
      moved / "data" / "images" / "a.png")
  assert evaluate.resolve_image(stored[1], str(moved), str(data_dir)) == str(inside_data)
  assert evaluate.resolve_image(stored[2], str(moved), str(data_dir)) == str(outside)
  # Without a data folder given, the run's config.json says where it was.
  with open(moved / evaluate.CONFIG_FILE, "w") as f:
    json.dump({"data_dir": str(data_dir)}, f)
  assert evaluate.resolve_image(stored[1:2], str(moved)) == [str(inside_data)]


def test_the_console_shows_scores_as_a_short_table():
  scores = scores_lib.Scores({"ref/bleu1": 0.123456, "ref/score": 0.5},
                             {"ref/meteor": "nltk WordNet not found"},
                             {"ref/score": "METEOR/4 term missing"})
  assert evaluate.scores_table(scores, "test scores:").splitlines() == [
      "test scores:",
      "  ref/bleu1   0.1235",
      "  ref/score   0.5000 (partial: METEOR/4 term missing)",
      "  ref/meteor  skipped: nltk WordNet not found",
  ]
