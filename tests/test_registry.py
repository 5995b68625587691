"""Tests for micar_jax.data.registry: every per-dataset decision is read from it."""

import glob
import importlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from micar_jax.data import prepare, registry, tfds_builders

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_prepare_and_tfds_offer_exactly_the_registry_datasets():
  assert prepare.DATASETS == tuple(registry.DATASETS)
  assert {c.name: c.num_views for c in tfds_builders.MicarReports.BUILDER_CONFIGS} == {
      d.name: d.num_views for d in registry.DATASETS.values()}


def test_every_loader_module_has_load():
  for d in registry.DATASETS.values():
    if d.loader:
      assert callable(importlib.import_module(d.loader).load), d.name
  assert [d.name for d in registry.DATASETS.values() if not d.loader] == ["synthetic"]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_config_views_come_from_registry(path, load_config):
  c = load_config(path)
  assert c.data.num_views == registry.DATASETS[c.dataset].num_views
  assert tuple(c.data.synthetic_sizes) == registry.DATASETS["synthetic"].generated_sizes


def test_iu_xray_is_the_two_view_dataset(load_config):
  assert [d.name for d in registry.DATASETS.values() if d.num_views != 1] == ["iu_xray"]
  assert load_config("configs/iu_xray.py").data.num_views == 2


def test_prepare_cli_choices_and_synthetic_sizes_come_from_registry():
  # A subprocess: the CLI's absl flags must not be defined in this test process.
  usage = subprocess.run([sys.executable, "-m", "micar_jax.data.prepare", "--helpshort"],
                         capture_output=True, text=True).stdout  # absl help exits 1.
  assert f"--dataset: <{'|'.join(registry.DATASETS)}>" in usage
  sizes = ",".join(map(str, registry.DATASETS["synthetic"].generated_sizes))
  assert f"(default: '{sizes}')" in usage


_TOY_LOADER = '''
import os

from micar_jax.data import registry
from micar_jax.data.prepare import common


def load(request, bad):
  rows = {s: [common.Row(f"{s} 0", os.path.join(request.raw_dir, "a.png"),
                         f"{request.dataset.name} {s}", str.lower)] for s in registry.SPLITS}
  return common.finish_rows(rows, bad)
'''


def test_a_new_dataset_is_a_registry_entry_and_its_loader(tmp_path, monkeypatch):
  (tmp_path / "toy_loader.py").write_text(_TOY_LOADER)
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setitem(registry.DATASETS, "toy", registry.Dataset("toy", "toy_loader"))
  raw = tmp_path / "raw"
  raw.mkdir()
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(raw / "a.png")
  try:
    result = prepare.prepare("toy", str(raw), str(tmp_path / "out"), stream=io.StringIO())
  finally:
    sys.modules.pop("toy_loader", None)
  assert result.examples == {"train": 1, "val": 1, "test": 1}
  line = json.loads((tmp_path / "out" / "val.jsonl").read_text())
  assert line == {"image": "images/a.png", "report": "toy val"}  # linked into OUT
