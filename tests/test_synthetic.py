"""Tests for micar_jax.data.synthetic: determinism, layout, image-report agreement, location."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from micar_jax.config import defaults
from micar_jax.data import synthetic


def _files(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for n in names:
      path = os.path.join(dirpath, n)
      out[os.path.relpath(path, root)] = open(path, "rb").read()
  return out


def test_same_seed_same_files_other_seed_differs(tmp_path):
  synthetic.generate(str(tmp_path / "a"), (6, 2, 2), 3, 24)
  synthetic.generate(str(tmp_path / "b"), (6, 2, 2), 3, 24)
  synthetic.generate(str(tmp_path / "c"), (6, 2, 2), 4, 24)
  a, b, c = (_files(tmp_path / n) for n in "abc")
  # jsonl image paths are relative to the folder, so the files are byte-identical.
  assert a == b
  assert a != c
  assert sorted(a) == sorted(["train.jsonl", "val.jsonl", "test.jsonl"] +
                             [f"images/{s}_{i:06d}.png" for s, n in (("train", 6), ("val", 2),
                                                                     ("test", 2)) for i in range(n)])
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # temp dir renamed away
  with pytest.raises(FileExistsError):
    synthetic.generate(str(tmp_path / "a"), (1, 1, 1), 3, 24)


def test_report_is_a_function_of_the_findings():
  normal = {"right_eye": True, "findings": []}
  assert synthetic.report(normal) == "color image of the fundus of the right eye in a normal person ."
  spec = {"right_eye": False, "findings": [(0, 0, 1, 2), (3, 1, 0, 1)]}
  assert synthetic.report(spec) == (
      "color image of the fundus of the left eye . two large hemorrhages in the superior temporal"
      " region . one small hard exudate in the inferior nasal region .")


def _has_colour(img, rgb, tol=20):
  return bool((np.abs(img.astype(int) - rgb).max(-1) < tol).sum() >= 3)


def test_images_show_what_reports_say(tmp_path):
  synthetic.generate(str(tmp_path / "d"), (60, 0, 0), 0, 64)
  rows = [json.loads(l) for l in open(tmp_path / "d" / "train.jsonl")]
  assert len({r["report"] for r in rows}) > 30
  for row in rows:
    img = np.asarray(Image.open(tmp_path / "d" / row["image"]))
    assert img.shape == (64, 64, 3)
    for singular, plural, rgb in synthetic.KINDS:
      named = f" {singular} in" in row["report"] or f" {plural} in" in row["report"]
      assert named == _has_colour(img, rgb), (row, singular)
    # The optic disc is on the image side named by the eye.
    disc_cols = np.nonzero((np.abs(img.astype(int) - synthetic.DISC_RGB).max(-1) < 30).any(0))[0]
    assert (disc_cols.mean() > 32) == (" right eye" in row["report"])


def test_ensure_synthetic_generates_once(tmp_path):
  config = defaults.base_config()
  config.data_dir = str(tmp_path / "syn")
  config.data.synthetic_sizes = (4, 2, 2)
  config.data.resize_size = 16
  synthetic.ensure_synthetic(config)
  first = _files(config.data_dir)
  assert len(open(os.path.join(config.data_dir, "val.jsonl")).readlines()) == 2
  synthetic.ensure_synthetic(config)
  assert _files(config.data_dir) == first


def test_a_run_generates_it_in_its_workdir_not_the_current_folder(tmp_path, monkeypatch, capsys,
                                                                    load_config):
  from micar_jax import errors, main
  config = load_config("configs/synthetic.py:tiny")
  config.data.synthetic_sizes = (4, 2, 2)
  config.mesh.num_devices = 1
  assert config.data_dir == ""
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  with pytest.raises(errors.UserError, match="no best checkpoint"):
    main.run(config, str(tmp_path / "run"), "test", None)
  assert len(open(tmp_path / "run" / "data" / "val.jsonl").readlines()) == 2
  assert os.listdir(tmp_path / "cwd") == []
  assert f"synthetic data: {tmp_path / 'run' / 'data'}\n" in capsys.readouterr().out


def test_empty_data_dir_is_refused_not_generated_in_the_current_folder():
  config = defaults.base_config()
  config.data_dir = ""
  with pytest.raises(ValueError, match="data_dir is empty"):
    synthetic.ensure_synthetic(config)
