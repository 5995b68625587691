"""--mode=predict: one report per readable image of a directory, from the best checkpoint."""

import json
import os
import shutil

import pytest
from PIL import Image

from micar_jax import errors
from micar_jax.inference import predict


def test_predict_writes_a_new_file_with_reports_and_skipped_images(tiny_run, tiny_config, capsys):
  folder = tiny_run("predict")  # its own copy of the tiny run: a best checkpoint, no training
  config = tiny_config(folder)
  workdir = str(folder / "run")
  images = folder / "mine"
  images.mkdir()
  for name in ("a.png", "b.png"):
    shutil.copy(folder / "data" / "images" / "test_000000.png", images / name)
  (images / "broken.png").write_bytes(b"not a png")
  out = predict.predict(config, workdir, [str(images)])
  rows = [json.loads(l) for l in open(out)]
  assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.png", "broken.png"]
  assert all(isinstance(r["report"], str) and "<eos>" not in r["report"] for r in rows[:2])
  assert rows[2]["report"] is None and "broken.png" in rows[2]["skipped"]
  printed = capsys.readouterr().out
  assert "2 reports, 1 skipped" in printed and f"skipped {images / 'broken.png'}: " in printed
  # A second call writes a new file: the first one's reports stay.
  again = predict.predict(config, workdir, [str(images / "a.png")])
  assert again != out and os.path.exists(out)
  assert [json.loads(l)["image"] for l in open(again)] == [str(images / "a.png")]
  with pytest.raises(errors.UserError, match="no readable images .*broken.png"):
    predict.predict(config, workdir, [str(images / "broken.png")])


def test_output_names_never_collide(tmp_path):
  first = predict.new_output_path(str(tmp_path), now=0.0)
  assert first.endswith("predictions-19700101T000000Z.jsonl")
  open(first, "w").close()
  assert predict.new_output_path(str(tmp_path), now=0.0).endswith(
      "predictions-19700101T000000Z-2.jsonl")


def test_predict_notes_an_exif_orientation_it_does_not_apply(tiny_run, tiny_config, capsys):
  folder = tiny_run("predict_exif")
  config = tiny_config(folder)
  workdir = str(folder / "run")
  images = folder / "mine"
  images.mkdir()
  source = Image.open(folder / "data" / "images" / "test_000000.png").convert("RGB")
  source = source.resize((source.width * 2, source.height))  # not square: turning it matters
  exif = Image.Exif()
  exif[0x0112] = 6
  source.save(images / "phone.jpg", quality=95, exif=exif)
  source.save(images / "plain.jpg", quality=95)
  rows = [json.loads(l) for l in open(predict.predict(config, workdir, [str(images)]))]
  assert [os.path.basename(r["image"]) for r in rows] == ["phone.jpg", "plain.jpg"]
  assert rows[0]["exif_orientation"] == 6
  assert rows[0]["note"] == ("EXIF orientation 6 not applied, as the reference; "
                             "data.apply_exif_orientation=True applies it")
  assert "exif_orientation" not in rows[1] and "note" not in rows[1]
  assert "1 of the images carry an EXIF orientation tag that was not applied" in capsys.readouterr().out
  with config.unlocked():
    config.data.apply_exif_orientation = True
  rows = [json.loads(l) for l in open(predict.predict(config, workdir, [str(images)]))]
  assert rows[0]["exif_orientation"] == 6
  assert rows[0]["note"] == "EXIF orientation 6 applied (data.apply_exif_orientation=True)"
  assert "exif_orientation" not in rows[1]


def test_two_view_predict_matches_test_mode_per_study(tested_two_view_run, capsys):
  folder, config = tested_two_view_run("predict_two_view")
  workdir = str(folder / "run")
  tested = {tuple(e["image"]): e["generated"]
            for e in map(json.loads, open(folder / "run" / "test" / "examples.jsonl"))}
  # (b) the prepared test split itself as the study list, plus a malformed row.
  listing = folder / "data" / "studies.jsonl"  # views relative to the list's folder
  listing.write_text((folder / "data" / "test.jsonl").read_text()
                     + json.dumps({"image": ["images/test_000000.png"]}) + "\n")
  rows = [json.loads(l) for l in open(predict.predict(config, workdir, [str(listing)]))]
  assert len(rows) == 5 and rows[-1]["report"] is None and "1 image file" in rows[-1]["skipped"]
  assert [r["study"] for r in rows] == [f"studies-{n}" for n in range(1, 6)]
  for r in rows[:4]:
    assert len(r["images"]) == 2 and tested[tuple(r["images"])] == r["report"]
  assert "4 reports, 1 skipped" in capsys.readouterr().out
  # (a) a folder of study folders, views in sorted file-name order; a one-view study is skipped.
  studies = folder / "mine"
  for name, views in (("s1", ("test_000000", "test_000001")), ("s2", ("test_000002",))):
    (studies / name).mkdir(parents=True)
    for v, view in enumerate(views):
      shutil.copy(folder / "data" / "images" / f"{view}.png", studies / name / f"{v}.png")
  rows = [json.loads(l) for l in open(predict.predict(config, workdir, [str(studies)]))]
  assert [r["study"] for r in rows] == ["s1", "s2"]
  assert rows[0]["report"] == tested[("images/test_000000.png", "images/test_000001.png")]
  assert rows[0]["images"] == [str(studies / "s1" / "0.png"), str(studies / "s1" / "1.png")]
  assert rows[1]["report"] is None and "num_views=2" in rows[1]["skipped"]
  # One study folder by itself, and its views named as loose images is a user error.
  (only,) = map(json.loads, open(predict.predict(config, workdir, [str(studies / "s1")])))
  assert only["report"] == rows[0]["report"]
  with pytest.raises(errors.UserError, match="study folders"):
    predict.predict(config, workdir, [str(studies / "s1" / "0.png")])
  with pytest.raises(errors.UserError, match="no readable studies"):
    predict.predict(config, workdir, [str(studies / "s2")])
