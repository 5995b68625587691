"""Validation loss over a split: the reference's mean of batch means, or the token mean."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from micar_jax import errors, evaluate
from micar_jax.config import defaults
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
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
