"""tools.stand_in_r2gen: a small R2Gen folder that prepares as IU X-ray, two drawn views per study."""

import json

import numpy as np
import pytest
from PIL import Image

from micar_jax import errors
from micar_jax.data import prepare
from micar_jax.tools import stand_in_r2gen


def _annotation(path):
  def record(i, split, report):
    return {"id": f"CXR{i}_IM-{i}", "report": report, "split": split,
            "image_path": [f"CXR{i}_IM-{i}/0.png", f"CXR{i}_IM-{i}/1.png"]}
  ann = {"train": [record(i, "train", "The heart is enlarged. No effusion." if i % 2 else
                          "The lungs are clear. Heart size normal.") for i in range(5)],
         "val": [record(10 + i, "val", "Cardiomegaly. Lungs clear.") for i in range(3)],
         # The damaged test key of one public copy.
         "    ": [record(20 + i, "test", "No acute disease.") for i in range(3)]}
  path.write_text(json.dumps(ann))
  return ann


def test_the_folder_prepares_as_iu_xray_with_two_views(tmp_path):
  ann = _annotation(tmp_path / "annotation.json")
  raw = tmp_path / "raw"
  drawn = stand_in_r2gen.write(str(tmp_path / "annotation.json"), str(raw), (4, 2, 2), 64)
  assert drawn == 2 * (4 + 2 + 2)
  written = json.loads((raw / "annotation.json").read_text())
  assert written["train"] == ann["train"][:4] and written["test"] == ann["    "][:2]
  prepare.prepare("iu_xray", str(raw), str(tmp_path / "data"))
  rows = [json.loads(l) for l in (tmp_path / "data" / "train.jsonl").read_text().splitlines()]
  assert len(rows) == 4 and all(len(r["image"]) == 2 for r in rows)
  front, side = (np.asarray(Image.open(raw / "images" / p)) for p in ann["train"][0]["image_path"])
  assert front.shape == side.shape == (64, 64) and not np.array_equal(front, side)
  # The one signal: an enlarged heart draws a wider shadow (brighter lower middle band).
  normal = np.asarray(stand_in_r2gen.draw("x", "Heart size normal.", 0, 64), np.float64)
  big = np.asarray(stand_in_r2gen.draw("x", "Cardiomegaly.", 0, 64), np.float64)
  assert big[40:50, 8:20].mean() > normal[40:50, 8:20].mean() + 10


def test_bad_inputs_are_one_line_errors(tmp_path):
  (tmp_path / "bad.json").write_text("[1, 2]")
  with pytest.raises(errors.UserError, match="not an R2Gen annotation"):
    stand_in_r2gen.write(str(tmp_path / "bad.json"), str(tmp_path / "out"), (1, 1, 1), 32)
  with pytest.raises(errors.UserError, match="cannot read"):
    stand_in_r2gen.write(str(tmp_path / "none.json"), str(tmp_path / "out"), (1, 1, 1), 32)
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("")
  with pytest.raises(errors.UserError, match="is not empty"):
    stand_in_r2gen.write(str(tmp_path / "none.json"), str(tmp_path / "full"), (1, 1, 1), 32)
