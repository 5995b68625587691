"""Tests for micar_jax.data.prepare: every published layout, bad rows, --strict, atomic output.

Split memberships are scikit-learn `train_test_split` values pinned as
regression values (see test_split.py); reports are built so that their cleaned
text is obvious, and the tricky ones are checked literally.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from micar_jax import errors
from micar_jax.data import prepare, registry

BOM = b"\xef\xbb\xbf"


def _image(path, fmt="PNG", seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.RandomState(seed).randint(0, 255, (4, 5, 3), np.uint8)
  Image.fromarray(pixels).save(path, format=fmt)


def _encoded(fmt, seed):
  buf = io.BytesIO()
  Image.fromarray(np.random.RandomState(seed).randint(0, 255, (4, 5, 3), np.uint8)).save(buf, fmt)
  return buf.getvalue()


def _run(dataset, raw, out, strict=False):
  log = io.StringIO()
  result = prepare.prepare(dataset, str(raw), str(out), strict=strict, stream=log)
  lines = {s: [json.loads(l) for l in (out / f"{s}.jsonl").read_text("utf-8").splitlines()]
           for s in registry.SPLITS}
  return result, lines, log.getvalue()


def _covctr_raw(tmp_path):
  """12 records: BOM, CRLF, a quoted newline, a blank line, a duplicate id and three bad rows."""
  raw = tmp_path / "covctr"
  recs = []
  for i in range(12):
    report = f"Report number {i}."
    if i == 0:
      report = "Ünïcødé; (GGO)\r\nsecond line"
    recs.append(f'img{i % 11}.png,zh,t,1,imp,"{report}"' if i != 7 else "img7.png,zh,t,1,imp,")
    if i not in (3, 10):
      _image(str(raw / "images" / f"img{i % 11}.png"), seed=i)
  (raw / "images" / "img10.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
  text = "image_id,findings,terminologies,COVID,impression,reports_En\r\n" + "\r\n".join(
      recs[:5] + [""] + recs[5:]) + "\r\n"
  (raw / "reports_ZH_EN.csv").write_bytes(BOM + text.encode("utf-8"))
  return raw


def test_covctr_split_order_text_and_bad_rows(tmp_path):
  result, lines, log = _run("covctr", _covctr_raw(tmp_path), tmp_path / "out")
  # sklearn: train [5,1,0,9,2,7,3,6,11], val [4], test [10,8]; 3 (no image),
  # 7 (empty report) and 10 (corrupt image) are left out after the split.
  expected = {"train": [5, 1, 0, 9, 2, 6, 11], "val": [4], "test": [8]}
  for split, idx in expected.items():
    got = [(os.path.basename(r["image"]), r["report"]) for r in lines[split]]
    want = [(f"img{i % 11}.png", f"report number {i} .") for i in idx]
    if split == "train":
      want[2] = ("img0.png", "ünïcødé , ggo\r\nsecond line .")
    assert got == want
  assert result.examples == {"train": 7, "val": 1, "test": 1}
  assert result.skipped == {"-": 0, "train": 2, "val": 0, "test": 1}
  reasons = {where: reason for _, where, reason in result.bad_rows}
  assert set(reasons) == {"reports_ZH_EN.csv row 4 (line 6)", "reports_ZH_EN.csv row 8 (line 11)",
                          "reports_ZH_EN.csv row 11 (line 14)"}
  assert "missing image" in reasons["reports_ZH_EN.csv row 4 (line 6)"]
  assert "report" in reasons["reports_ZH_EN.csv row 8 (line 11)"]
  assert "corrupt image" in reasons["reports_ZH_EN.csv row 11 (line 14)"]
  assert result.summary[0].startswith("train: 7 examples, vocabulary coverage ")
  assert result.summary[3] == ("left out 3 rows (train 2, test 1): "
                               "1 report is missing or not text, 1 missing image, 1 corrupt image")


def test_covctr_malformed_record_keeps_its_split_place(tmp_path):
  raw = _covctr_raw(tmp_path)
  csv_path = raw / "reports_ZH_EN.csv"
  # Record 1 (the 2nd row) gets an extra field: pandas would reject the file.
  csv_path.write_bytes(csv_path.read_bytes().replace(b'"Report number 1."', b'"Report number 1.",x'))
  result, lines, _ = _run("covctr", raw, tmp_path / "out")
  assert [os.path.basename(r["image"]) for r in lines["train"]] == [
      f"img{i}.png" for i in (5, 0, 9, 2, 6)] + ["img0.png"]
  assert any("malformed CSV record" in r for _, _, r in result.bad_rows)


def test_strict_names_the_first_bad_row_and_writes_nothing(tmp_path):
  # Rows are checked in output order: train's 8th record (index 7) comes before index 3.
  raw = _covctr_raw(tmp_path)
  with pytest.raises(errors.UserError, match=r"reports_ZH_EN.csv row 8 \(line 11\): report is missing"):
    prepare.prepare("covctr", str(raw), str(tmp_path / "out"), strict=True)
  assert os.listdir(tmp_path) == ["covctr"]


def test_cli_strict_is_one_line_error(tmp_path):
  raw = _covctr_raw(tmp_path)
  proc = subprocess.run(
      [sys.executable, "-m", "micar_jax.data.prepare", "--dataset=covctr", f"--raw_dir={raw}",
       f"--out_dir={tmp_path / 'out'}", "--strict"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "out").exists()


def test_cli_writes_summary(tmp_path):
  raw = _covctr_raw(tmp_path)
  proc = subprocess.run(
      [sys.executable, "-m", "micar_jax.data.prepare", "--dataset=covctr", f"--raw_dir={raw}",
       f"--out_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[-1] == f"full list: {tmp_path / 'out' / 'skipped.tsv'}"
  assert sorted(os.listdir(tmp_path / "out")) == [
      "images", "skipped.tsv", "test.jsonl", "train.jsonl", "val.jsonl"]


def test_existing_output_is_refused(tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("x")
  with pytest.raises(errors.UserError, match="not empty"):
    prepare.prepare("covctr", str(_covctr_raw(tmp_path)), str(tmp_path / "out"))


@pytest.mark.parametrize("name", ["captions.json", "peir_gross_captions.json"])
def test_pgross_null_caption_is_dropped_before_split(tmp_path, name):
  raw = tmp_path / "pgross"
  captions = {}
  for i in range(10):
    captions[f"p{i}.jpg"] = f"Lung: Gross: Finding {i}" if i != 4 else "Heart:"
    if i == 3:
      captions["null.jpg"] = None
    if i != 8:
      _image(str(raw / "images" / f"p{i}.jpg"), "JPEG", seed=i)
  (raw / name).write_text(json.dumps(captions), "utf-8")
  result, lines, _ = _run("pgross", raw, tmp_path / "out")
  # sklearn on the 10 non-null rows: train [1,0,8,4,5,6,3], val [9], test [7,2];
  # 8 has no image and 4 is empty after the last ":".
  assert {s: [r["report"] for r in lines[s]] for s in registry.SPLITS} == {
      "train": [f"finding {i} ." for i in (1, 0, 5, 6, 3)], "val": ["finding 9 ."],
      "test": ["finding 7 .", "finding 2 ."]}
  assert result.skipped == {"-": 1, "train": 2, "val": 0, "test": 0}


def _mmr_csv(path, header, rows):
  text = "\r\n".join([header] + rows) + "\r\n"
  path.write_bytes(BOM + text.encode("utf-8"))


def test_mmretinal_per_modality_split_and_image_lookup(tmp_path):
  raw = tmp_path / "mmr"
  sizes = {"CFP": 10, "FFA": 7, "OCT": 6}
  for mod, n in sizes.items():
    rows = []
    for i in range(n):
      rows.append(f'{mod}{i},"Same patient as Figure 2-3A. {mod} case {i}",zh'
                  + (",Y" if mod == "OCT" else ""))
      if (mod, i) != ("CFP", 2):
        _image(str(raw / mod / f"{mod}{i}.{'jpg' if i % 2 else 'png'}"),
               "JPEG" if i % 2 else "PNG", seed=i)
    header = "Image_ID,en_caption,cn_caption" + (",is_multipic" if mod == "OCT" else "")
    _mmr_csv(raw / f"{mod}_translated_v1.csv", header, rows)
  result, lines, _ = _run("mmretinal", raw, tmp_path / "out")
  # sklearn per modality: n=10 -> [4,1,0,8,2,7,3,6] [5] [9]; n=7 -> [0,5,2,6,3] [1] [4];
  # n=6 -> [2,4,5,3] [1] [0]. CFP2 has no image file.
  expected = {"train": [("CFP", i) for i in (4, 1, 0, 8, 7, 3, 6)]
                       + [("FFA", i) for i in (0, 5, 2, 6, 3)] + [("OCT", i) for i in (2, 4, 5, 3)],
              "val": [("CFP", 5), ("FFA", 1), ("OCT", 1)],
              "test": [("CFP", 9), ("FFA", 4), ("OCT", 0)]}
  for split, want in expected.items():
    assert [(os.path.basename(r["image"]), r["report"]) for r in lines[split]] == [
        (f"{m}{i}.{'jpg' if i % 2 else 'png'}", f"{m.lower()} case {i} .") for m, i in want]
  assert result.skipped["train"] == 1


def test_mmretinal_column_missing_in_one_modality_drops_its_rows(tmp_path):
  # The reference concatenates the modalities and then dropna()s: a kept column
  # that only CFP has is NA for every FFA/OCT row.
  raw = tmp_path / "mmr"
  raw.mkdir()
  for mod in ("CFP", "FFA", "OCT"):
    extra = mod == "CFP"
    rows = [f"{mod}{i},caption {i},zh" + (",note" if extra else "") for i in range(6)]
    _mmr_csv(raw / f"{mod}_translated_v1.csv",
             "Image_ID,en_caption,cn_caption" + (",source" if extra else ""), rows)
    for i in range(6):
      _image(str(raw / mod / f"{mod}{i}.png"), seed=i)
  result, lines, _ = _run("mmretinal", raw, tmp_path / "out")
  assert [os.path.basename(r["image"]) for r in lines["train"]] == [f"CFP{i}.png" for i in (2, 4, 5, 3)]
  assert result.skipped["train"] == 8


def _roco_raw(tmp_path):
  raw = tmp_path / "roco"
  raw.mkdir()
  shards = {
      "train-00001-of-00002.parquet": [("ROCO_3", "Third.", _encoded("PNG", 3))],
      "train-00000-of-00002.parquet": [("ROCO_1", "A 45-year-old man, 3 cm mass.", _encoded("JPEG", 1)),
                                       ("ROCO_2", "Broken image", b"not an image"),
                                       ("ROCO_4", "   ", _encoded("PNG", 4))],
      "validation-00000-of-00001.parquet": [("ROCO_5", "Val\ncase", _encoded("PNG", 5))],
      "test-00000-of-00001.parquet": [("ROCO_6", "Test case", _encoded("PNG", 6))],
  }
  for name, recs in shards.items():
    pq.write_table(pa.Table.from_pylist(
        [{"image": {"bytes": b, "path": None}, "image_id": i, "caption": c} for i, c, b in recs]),
        str(raw / name))
  return raw, shards


def test_roco_images_written_once_pixel_identical(tmp_path):
  raw, shards = _roco_raw(tmp_path)
  out = tmp_path / "out"
  result, lines, _ = _run("roco", raw, out)
  assert [(os.path.basename(r["image"]), r["report"]) for r in lines["train"]] == [
      ("ROCO_1.png", "a xxxx man ,  xxxx mass ."), ("ROCO_3.png", "third .")]
  assert [r["report"] for r in lines["val"]] == ["val case ."]
  assert [r["report"] for r in lines["test"]] == ["test case ."]
  assert all(r["image"].startswith("images/") for s in lines.values() for r in s)
  assert sorted(os.listdir(out / "images")) == [f"ROCO_{i}.png" for i in (1, 3, 4, 5, 6)]
  jpeg = shards["train-00000-of-00002.parquet"][0][2]
  written = Image.open(out / "images" / "ROCO_1.png")
  assert written.format == "PNG"
  assert np.array_equal(np.asarray(written), np.asarray(Image.open(io.BytesIO(jpeg))))
  assert (out / "images" / "ROCO_3.png").read_bytes() == shards["train-00001-of-00002.parquet"][0][2]
  assert result.skipped["train"] == 2


def _iu_raw(tmp_path):
  raw = tmp_path / "iu"
  def rec(i, split, views=2):
    return {"id": f"CXR{i}", "report": f"1. Heart normal {'_abcdef'[i]}.. 2. No effusion.",
            "image_path": [f"CXR{i}/{v}.png" for v in range(views)], "split": split}
  ann = {"train": [rec(1, "train"), rec(2, "train", views=1), rec(3, "train"), "junk"],
         "val": [rec(4, "val")],
         "    ": [rec(5, "test"), rec(6, "test")]}  # A damaged "test" key, as in a public copy.
  for i in (1, 2, 3, 4, 5, 6):
    for v in (0, 1):
      if (i, v) != (3, 1):
        _image(str(raw / "images" / f"CXR{i}" / f"{v}.png"), seed=i)
  (raw / "annotation.json").write_text(json.dumps(ann), "utf-8")
  return raw


def test_iu_xray_keeps_r2gen_split_with_two_views(tmp_path):
  raw = _iu_raw(tmp_path)
  result, lines, _ = _run("iu_xray", raw, tmp_path / "out")
  assert lines["train"] == [{"image": ["images/CXR1/0.png", "images/CXR1/1.png"],
                             "report": "heart normal a . no effusion ."}]
  assert [r["report"] for r in lines["test"]] == ["heart normal e . no effusion .",
                                                  "heart normal f . no effusion ."]
  assert result.examples == {"train": 1, "val": 1, "test": 2}
  assert result.skipped["train"] == 3  # one view only, missing view, not a record


def test_mimic_cxr_uses_first_view(tmp_path):
  raw = _iu_raw(tmp_path)
  _, lines, _ = _run("mimic_cxr", raw, tmp_path / "out")
  assert [r["image"] for r in lines["train"]] == [f"images/CXR{i}/0.png" for i in (1, 2, 3)]
  assert lines["val"][0]["report"] == "heart normal d . no effusion ."


def test_summary_coverage_and_length():
  lines = prepare.summarize({"train": ["a a a b ."] * 1, "val": ["a c"], "test": []})
  assert lines[0] == ("train: 1 examples, vocabulary coverage 60.00% (train vocabulary: 1 words "
                      "with count >= 3), mean report length 5.0 tokens")
  assert "vocabulary coverage 50.00%" in lines[1]
  assert lines[2].startswith("test: 0 examples")


def test_synthetic_delegates_to_generator(tmp_path):
  result = prepare.prepare_synthetic(str(tmp_path / "syn"), (3, 2, 1), seed=0, image_size=8)
  assert result.examples == {"train": 3, "val": 2, "test": 1}
  assert len((tmp_path / "syn" / "val.jsonl").read_text().splitlines()) == 2


def test_bad_raw_dir_is_a_user_error(tmp_path):
  with pytest.raises(errors.UserError, match="no reports_ZH_EN.csv"):
    prepare.prepare("covctr", str(tmp_path), str(tmp_path / "out"))
  with pytest.raises(errors.UserError, match="must be one of"):
    prepare.prepare("nope", str(tmp_path), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_mmretinal_with_cfp_only_skips_absent_modalities_with_one_line_each(tmp_path):
  raw = tmp_path / "mmr"
  raw.mkdir()
  _mmr_csv(raw / "CFP_translated_v1.csv", "Image_ID,en_caption,cn_caption",
           [f"CFP{i},Fundus case {i},zh" for i in range(10)])
  for i in range(10):
    _image(str(raw / "CFP" / f"CFP{i}.png"), seed=i)
  result, lines, log = _run("mmretinal", raw, tmp_path / "out")
  assert result.examples == {"train": 8, "val": 1, "test": 1}
  assert [os.path.basename(r["image"]) for r in lines["val"]] == ["CFP5.png"]  # as with all three
  assert [line for line in log.splitlines() if "left out" in line] == [
      "MM-Retinal: no FFA_translated_v1.csv; FFA left out (optional modality)",
      "MM-Retinal: no OCT_translated_v1.csv; OCT left out (optional modality)"]


def test_mmretinal_errors_name_the_file_and_modality(tmp_path):
  raw = tmp_path / "mmr"
  raw.mkdir()
  with pytest.raises(errors.UserError, match="none of CFP_translated_v1.csv, FFA_translated_v1"):
    prepare.prepare("mmretinal", str(raw), str(tmp_path / "out"))
  _mmr_csv(raw / "OCT_translated_v1.csv", "Image_ID,en_caption,cn_caption,is_multipic", ["OCT0,a,zh,Y"])
  with pytest.raises(errors.UserError, match=r"OCT_translated_v1.csv is there but its image folder"):
    prepare.prepare("mmretinal", str(raw), str(tmp_path / "out"))
  (raw / "OCT").mkdir()
  with pytest.raises(errors.UserError, match=r"OCT_translated_v1.csv \(OCT\): cannot split 1 rows"):
    prepare.prepare("mmretinal", str(raw), str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path)) == ["mmr"]


def test_covctr_other_csv_name_is_refused_naming_the_expected_file(tmp_path):
  raw = _covctr_raw(tmp_path)
  (raw / "reports_ZH_EN.csv").rename(raw / "reports_ZH_EN_excerpt.csv")
  with pytest.raises(errors.UserError,
                     match=r"no reports_ZH_EN.csv .*found reports_ZH_EN_excerpt.csv"):
    prepare.prepare("covctr", str(raw), str(tmp_path / "out"))


def test_many_left_out_rows_are_summarised_and_listed_in_skipped_tsv(tmp_path):
  raw = _covctr_raw(tmp_path)
  for i in (0, 1, 2, 4, 5, 6):
    (raw / "images" / f"img{i}.png").unlink()
  out = tmp_path / "out"
  result, _, _ = _run("covctr", raw, out)
  summary = result.summary[3:]
  assert summary[0] == ("left out 10 rows (train 8, val 1, test 1): "
                        "8 missing image, 1 report is missing or not text, 1 corrupt image")
  assert len(summary) == 1 + 5 + 2
  assert summary[1].startswith("  [train] reports_ZH_EN.csv row 6 (line 9): missing image /")
  assert summary[-2:] == ["  ... 5 more", f"full list: {out / 'skipped.tsv'}"]
  rows = (out / "skipped.tsv").read_text("utf-8").splitlines()
  assert rows[0] == "split\twhere\treason"
  assert [tuple(r.split("\t")) for r in rows[1:]] == result.bad_rows


def test_prepared_folder_has_umask_permissions(tmp_path):
  old = os.umask(0o027)
  try:
    _run("covctr", _covctr_raw(tmp_path), tmp_path / "out")
  finally:
    os.umask(old)
  assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
  assert (tmp_path / "out" / "train.jsonl").stat().st_mode & 0o777 == 0o640


def test_prepared_folder_is_movable_and_independent_of_raw(tmp_path):
  from micar_jax.data import jsonl
  raw = _iu_raw(tmp_path)
  _run("iu_xray", raw, tmp_path / "out")
  shutil.rmtree(raw)
  moved = tmp_path / "elsewhere" / "iu"
  os.makedirs(moved.parent)
  os.rename(tmp_path / "out", moved)
  rows = jsonl.read_split(moved, "train")
  assert rows == [{"image": [str(moved / "images/CXR1/0.png"), str(moved / "images/CXR1/1.png")],
                   "report": "heart normal a . no effusion ."}]
  assert Image.open(rows[0]["image"][1]).size == (5, 4)


def test_absolute_paths_of_older_folders_still_load(tmp_path):
  from micar_jax.data import jsonl
  _image(str(tmp_path / "imgs" / "a.png"))
  folder = tmp_path / "old"
  folder.mkdir()
  (folder / "val.jsonl").write_text(
      json.dumps({"image": str(tmp_path / "imgs" / "a.png"), "report": "r ."}) + "\n")
  assert jsonl.read_split(folder, "val") == [{"image": str(tmp_path / "imgs" / "a.png"),
                                              "report": "r ."}]


def _roco_release(tmp_path):
  """The public release: test/ and validation/ radiology folders, images as its fetch script names them."""
  raw = tmp_path / "roco-dataset" / "data"
  for split, ids in (("validation", (1, 2)), ("test", (3, 4, 5))):
    folder = raw / split / "radiology"
    folder.mkdir(parents=True)
    (folder / "captions.txt").write_text(
        "".join(f"ROCO_{i:05d}\t A 45-year-old man, case {i}.\n" for i in ids) + "ROCO_99999\n")
    (folder / "dlinks.txt").write_text("".join(
        f"ROCO_{i:05d}\twget -r ftp://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_package/8d/34/PMC{i}.tar.gz "
        f"-P /path/to/Dir\tfig-{i}.jpg\n" for i in ids))
    for i in ids:
      if i != 4:
        _image(str(folder / "images" / f"PMC{i}_fig-{i}.jpg"), "JPEG", seed=i)
  return tmp_path / "roco-dataset"


def test_roco_release_layout_reads_captions_and_fetched_images(tmp_path):
  raw = _roco_release(tmp_path)
  out = tmp_path / "out"
  result, lines, _ = _run("roco", raw, out)
  assert lines["train"] == []
  assert lines["val"] == [{"image": f"images/ROCO_0000{i}.png", "report": f"a xxxx man ,  case {i} ."}
                          for i in (1, 2)]
  assert [r["image"] for r in lines["test"]] == ["images/ROCO_00003.png", "images/ROCO_00005.png"]
  written = Image.open(out / "images" / "ROCO_00003.png")
  assert written.format == "PNG"
  jpeg = raw / "data" / "test" / "radiology" / "images" / "PMC3_fig-3.jpg"
  assert np.array_equal(np.asarray(written), np.asarray(Image.open(jpeg)))
  reasons = {w: r for _, w, r in result.bad_rows}
  assert reasons["test/radiology/captions.txt line 2"].startswith("missing image ")
  assert reasons["test/radiology/captions.txt line 4"].startswith("malformed line")
  assert result.skipped == {"-": 0, "train": 0, "val": 1, "test": 2}


def test_every_row_left_out_is_one_error_and_writes_nothing(tmp_path):
  raw = _iu_raw(tmp_path)
  shutil.rmtree(raw / "images")
  (raw / "images").mkdir()
  with pytest.raises(errors.UserError, match=r"^all 7 rows were left out \(5 missing image, "
                     r"2 malformed record\), e\.g\. annotation.json train\[0\] \(id 'CXR1'\): "
                     r"missing image .*; check RAW against docs/datasets.md$"):
    prepare.prepare("iu_xray", str(raw), str(tmp_path / "out"))
  assert sorted(os.listdir(tmp_path)) == ["iu"]


def test_images_below_raw_keep_distinct_names_in_out(tmp_path):
  from micar_jax.data.prepare import common, output
  raw, stage = tmp_path / "raw", tmp_path / "stage"
  for i, rel in enumerate(("a.png", "images/a.png", "CFP/b.png")):
    _image(str(raw / rel), seed=i)
  stage.mkdir()
  request = common.Request(registry.DATASETS["covctr"], str(raw), str(stage), str(tmp_path / "out"),
                           io.StringIO())
  examples = {"train": [common.Example(str(raw / r), "x .") for r in ("images/a.png", "CFP/b.png")],
              "val": [common.Example(str(raw / "a.png"), "y .")], "test": []}
  placed = output.place_images(examples, request)
  names = [e.image for s in ("train", "val") for e in placed[s]]
  assert names[:2] == ["images/a.png", "images/CFP/b.png"]
  assert names[2].startswith("images/other/") and names[2].endswith("/a.png")
  for (src, dest) in zip(("images/a.png", "CFP/b.png", "a.png"), names):
    assert (stage / dest).read_bytes() == (raw / src).read_bytes()
  assert request.stream.getvalue() == f"images: hard-linked 3 (no extra disk space) into {tmp_path / 'out' / 'images'}\n"


def test_images_are_fully_decoded_and_wide_or_alpha_modes_kept(tmp_path):
  raw = _covctr_raw(tmp_path)
  jpeg = _encoded("JPEG", 1)
  (raw / "images" / "img1.png").write_bytes(jpeg[:len(jpeg) - 40])  # truncated: verify() passes it
  (raw / "images" / "img2.png").write_bytes(b"")
  (raw / "images" / "img4.png").write_text("not an image at all")
  Image.fromarray(np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000).save(raw / "images" / "img5.png")
  Image.new("RGBA", (5, 4), (9, 9, 9, 100)).save(raw / "images" / "img6.png")
  result, lines, _ = _run("covctr", raw, tmp_path / "out")
  reasons = {where.split(" (")[0]: reason for _, where, reason in result.bad_rows}
  assert reasons["reports_ZH_EN.csv row 2"].startswith("corrupt image ")  # img1, truncated
  assert "truncated" in reasons["reports_ZH_EN.csv row 2"]
  assert reasons["reports_ZH_EN.csv row 3"].startswith("empty image file ")  # img2
  assert reasons["reports_ZH_EN.csv row 5"].startswith("corrupt image ")  # img4, text
  kept = [os.path.basename(r["image"]) for split in lines.values() for r in split]
  assert "img5.png" in kept and "img6.png" in kept


def test_reports_without_a_letter_or_digit_are_left_out_and_listed(tmp_path):
  raw = _covctr_raw(tmp_path)
  csv_path = raw / "reports_ZH_EN.csv"
  text = csv_path.read_bytes()
  # Punctuation only: COVCTR's cleaner keeps "!" and "?" as tokens, so these are not empty.
  text = text.replace(b'"Report number 1."', b'". , ; ! ?"')
  text = text.replace(b'"Report number 5."', b'"?!"')
  csv_path.write_bytes(text)
  out = tmp_path / "out"
  result, lines, _ = _run("covctr", raw, out)
  assert [os.path.basename(r["image"]) for r in lines["train"]] == [
      f"img{i % 11}.png" for i in (0, 9, 2, 6, 11)]
  assert all(any(c.isalnum() for c in r["report"]) for split in lines.values() for r in split)
  reasons = {where: reason for _, where, reason in result.bad_rows}
  assert reasons["reports_ZH_EN.csv row 2 (line 4)"] == "report has no letter or digit ('. , , ! ? .')"
  assert reasons["reports_ZH_EN.csv row 6 (line 9)"] == "report has no letter or digit ('?! .')"
  assert result.summary[3] == ("left out 5 rows (train 4, test 1): 2 report has no letter or digit, "
                               "1 report is missing or not text, 1 missing image, 1 corrupt image")
  listed = (out / "skipped.tsv").read_text("utf-8")
  assert "reports_ZH_EN.csv row 2 (line 4)\treport has no letter or digit" in listed


def test_exif_orientation_is_counted_not_applied(tmp_path):
  raw = _covctr_raw(tmp_path)
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
  pixels = np.random.RandomState(0).randint(0, 255, (4, 5, 3), np.uint8)
  Image.fromarray(pixels).save(raw / "images" / "img2.png", exif=exif)
  exif[0x0112] = 1  # the identity: not counted
  Image.fromarray(pixels).save(raw / "images" / "img9.png", exif=exif)
  result, lines, _ = _run("covctr", raw, tmp_path / "out")
  assert result.exif_oriented == 1
  assert result.summary[3] == (
      "EXIF orientation: 1 of 8 images carry a rotate/flip tag; not applied, as the reference "
      "(data.apply_exif_orientation=True applies it)")
  assert result.summary[4].startswith("left out 3 rows")
  # The prepared file is the raw one: pixels as stored, the tag kept.
  kept = tmp_path / "out" / next(r["image"] for r in lines["train"] if r["image"].endswith("img2.png"))
  with Image.open(kept) as img:
    assert img.size == (5, 4) and img.getexif()[0x0112] == 6
