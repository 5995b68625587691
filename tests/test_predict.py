"""--mode=predict: one report per readable image of a directory, from the best checkpoint."""

import json
import shutil

import pytest

from micar_jax import errors, predict, train
from tests import test_train


def test_predict_writes_one_report_per_readable_image(tmp_path):
  config = test_train.tiny_config(tmp_path, max_steps=1)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  images = tmp_path / "mine"
  images.mkdir()
  for name in ("a.png", "b.png"):
    shutil.copy(tmp_path / "data" / "images" / "test_000000.png", images / name)
  (images / "broken.png").write_bytes(b"not a png")
  out = predict.predict(config, workdir, [str(images)])
  rows = [json.loads(l) for l in open(out)]
  assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.png"]
  assert all(isinstance(r["report"], str) for r in rows)
  with pytest.raises(errors.UserError, match="no readable images"):
    predict.predict(config, workdir, [str(images / "broken.png")])
