"""A run folder's shared pieces: testing the best checkpoint, errors, a converted vocabulary."""

import csv
import json
import os
import shutil

import pytest

from micar_jax import errors
from micar_jax.core import run as run_lib
from micar_jax.data import sources


@pytest.fixture(scope="module")
def best_run(tiny_run, tiny_config):
  """A Run whose best checkpoint is a freshly initialised tiny model (no training)."""
  tmp = tiny_run("run")
  return tmp, run_lib.Run(tiny_config(tmp), str(tmp / "run"))


def test_testing_the_best_checkpoint_writes_reports_and_scores(best_run):
  _, run = best_run
  out = run_lib.test_best(run)
  assert out["num_examples"] == 4
  assert "ref/bleu4" in out["label_references"] and "ref/bleu4" in out["raw_references"]
  test_dir = os.path.join(run.workdir, "test")
  with open(os.path.join(test_dir, "scores.json"), encoding="utf-8") as f:
    assert json.load(f) == json.loads(json.dumps(out))
  with open(os.path.join(test_dir, "generated_reports.csv"), encoding="utf-8") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["image", "reference", "generated", "scored_reference", "scored_generated"]
  assert len(rows) == 5
  test_rows = sources.open_split(run.config, "test")
  for row, record in zip(rows[1:], test_rows):
    # References as written; the clean report is a prefix of the scored one (same ids).
    assert row[1] == record["report"]
    assert "<eos>" not in row[2] and row[4].startswith(row[2])


def test_a_workdir_without_a_best_checkpoint_is_a_user_error(best_run):
  tmp, run = best_run
  fresh = run_lib.Run(run.config, str(tmp / "fresh"))
  with pytest.raises(errors.UserError, match="no best checkpoint yet; run --mode=train first"):
    fresh.best_variables()


def test_a_converted_models_vocabulary_is_in_the_one_run_config(best_run):
  tmp, run = best_run
  converted = tmp / "converted"
  converted.mkdir()
  shutil.copy(os.path.join(run.workdir, "token2id.json"), converted / "token2id.json")
  config = run.config.copy_and_resolve_references()
  config.init_from = str(converted)
  (tmp / "from_converted").mkdir()  # as main does before a Run
  other = run_lib.Run(config, str(tmp / "from_converted"))
  assert other.config.data.vocab_path == str(converted / "token2id.json")
  assert config.data.vocab_path == ""  # the caller's config is left as it was
  assert other.tokenizer.vocab_size == run.tokenizer.vocab_size
  # The tokenizer came from the converted vocabulary, not from a new build in the workdir.
  assert not os.path.exists(tmp / "from_converted" / "token2id.json")
