"""A run folder's shared pieces: testing the best checkpoint, errors, a converted vocabulary,
the stored image paths and the recorded config."""

import csv
import json
import os
import shutil

import pytest

from micar_jax import errors, evaluate
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


def test_test_outputs_name_images_relative_to_the_data_folder_and_print_a_table(
    tiny_run, tiny_config, capsys):
  tmp = tiny_run("relative")
  config = tiny_config(tmp)
  run = run_lib.Run(config, str(tmp / "run"))
  run_lib.test_best(run)
  run.checkpoints.close()
  printed = capsys.readouterr().out
  assert "test scores (against the label-derived references" in printed
  assert "\n  ref/bleu4  " in printed and '{"ref/' not in printed
  test_dir = tmp / "run" / "test"
  with open(test_dir / "generated_reports.csv", encoding="utf-8") as f:
    csv_images = [row["image"] for row in csv.DictReader(f)]
  with open(test_dir / "examples.jsonl", encoding="utf-8") as f:
    jsonl_images = [json.loads(line)["image"] for line in f]
  assert csv_images == jsonl_images and len(csv_images) == 4
  assert all(not os.path.isabs(p) and p.startswith("images" + os.sep) for p in csv_images)
  # Both folders move together: the stored paths still name the images.
  moved = tmp.parent / (tmp.name + "_moved")
  shutil.move(str(tmp), str(moved))
  for stored in csv_images:
    assert os.path.isfile(evaluate.resolve_image(stored, str(moved / "run"), str(moved / "data")))


def test_a_train_run_records_its_complete_config(tiny_config, tmp_path, monkeypatch):
  from micar_jax import errors  # pylint: disable=g-import-not-at-top
  from micar_jax.training import train  # pylint: disable=g-import-not-at-top

  class _Stop(Exception):
    pass

  def stop(config):
    raise _Stop  # right after the record is written: no compile needed here

  monkeypatch.setattr(train, "_check_init_paths", stop)
  config = tiny_config(tmp_path)
  config.train.lr = 0.0123
  workdir = tmp_path / "run"
  with pytest.raises(_Stop):
    train.train_and_evaluate(config, str(workdir))
  seen = json.load(open(workdir / "config.json"))
  assert seen == json.loads(config.to_json_best_effort())
  assert seen["train"]["lr"] == 0.0123 and seen["data_dir"] == str(tmp_path / "data")
  # A config the run folder refuses (another model shape) leaves the record alone.
  other = tiny_config(tmp_path)
  other.model.d_model, other.model.num_heads = 48, 4
  with pytest.raises(errors.UserError, match="incompatible config"):
    train.train_and_evaluate(other, str(workdir))
  assert json.load(open(workdir / "config.json")) == seen
