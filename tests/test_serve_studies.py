"""--mode=serve on a two-view config: studies listed with both views, their per-word view
split by view as explain splits it, and one upload request = one study, reported as predict does."""

import html
import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from micar_jax import evaluate  # noqa: E402
from micar_jax.data import images as images_lib  # noqa: E402
from micar_jax.inference import explain, explain_figure, predict  # noqa: E402
from micar_jax.serve import engine as engine_lib  # noqa: E402


@pytest.fixture(scope="module")
def studies(tested_two_view_run, running_server):
  """(config, workdir, folder, httpx client) of a tested two-view run being served."""
  folder, config = tested_two_view_run("serve_studies")
  workdir = str(folder / "run")
  engine = engine_lib.Engine(config, workdir, max_wait_s=0.05)
  try:
    with running_server(engine, workdir) as url, httpx.Client(base_url=url, timeout=120) as c:
      yield config, workdir, folder, c
  finally:
    engine.close()


def _examples(workdir):
  return [json.loads(line) for line in open(os.path.join(workdir, "test", "examples.jsonl"))]


def _png_size_and_pixels(content):
  image = Image.open(io.BytesIO(content))
  return image.size, np.asarray(image)


def test_results_and_example_pages_show_every_view(studies):
  config, workdir, _, client = studies
  examples = _examples(workdir)
  page = client.get("/").text
  for e in examples:
    for v in range(2):
      assert f'src="/crops/examples/{e["index"]}.png?view={v}"' in page
  index = examples[0]["index"]
  example = client.get(f"/examples/{index}").text
  assert example.count('<img class="crop"') == 2 and example.count('<canvas class="overlay">') == 2
  first, second = (client.get(f"/crops/examples/{index}.png", params={"view": v}) for v in (0, 1))
  assert first.status_code == second.status_code == 200
  size, pixels = _png_size_and_pixels(second.content)
  assert size == (32, 32)
  # View 1 is the study's second image, as the network saw it.
  second_view = evaluate.resolve_image(examples[0]["image"][1], workdir, config.data_dir)
  want = explain_figure.unnormalise(images_lib.load(second_view, config.data.resize_size,
                                                    config.data.image_size))
  np.testing.assert_array_equal(pixels, want)
  assert not np.array_equal(pixels, _png_size_and_pixels(first.content)[1])
  missing = client.get(f"/crops/examples/{index}.png", params={"view": 2})
  assert missing.status_code == 404 and "no view 2" in missing.json()["error"]


def test_a_study_view_matches_test_mode_and_explain(studies):
  config, workdir, _, client = studies
  record = _examples(workdir)[0]
  view = client.get(f"/api/examples/{record['index']}/view").json()
  assert view["num_views"] == 2 and view["generated"] == record["generated"]
  paths = [os.path.join(config.data_dir, p) for p in record["image"]]
  listing = os.path.join(config.data_dir, "one_study.jsonl")
  with open(listing, "w", encoding="utf-8") as f:
    f.write(json.dumps({"image": paths, "report": ""}) + "\n")
  explain.explain(config, workdir, [listing])
  (stem,) = [n[:-5] for n in os.listdir(os.path.join(workdir, "explain")) if n.endswith(".json")]
  want = json.load(open(os.path.join(workdir, "explain", stem + ".json")))
  assert view["words"] == want["words"]
  attention = np.asarray(view["attention"])
  assert attention.shape[:2] == (len(want["words"]), 2)
  np.testing.assert_array_equal(attention, want["attention"])
  np.testing.assert_array_equal(view["experts"], want["experts"])


def test_an_upload_of_two_views_is_one_study_reported_as_predict(studies):
  config, workdir, folder, client = studies
  record = _examples(workdir)[1]
  study = folder / "upload_study"
  study.mkdir(exist_ok=True)
  names = []
  for v, rel in enumerate(record["image"]):
    names.append(f"{v}.png")
    shutil.copy(os.path.join(config.data_dir, rel), study / names[-1])
  (want,) = map(json.loads, open(predict.predict(config, workdir, [str(study)])))
  assert want["report"] == record["generated"]
  files = [("files", (n, (study / n).read_bytes(), "image/png")) for n in names]
  got = client.post("/api/reports", files=files)
  assert got.status_code == 200, got.text
  (only,) = got.json()
  assert only["report"] == want["report"] and only["name"] == "0.png + 1.png"
  assert client.get(f"/api/uploads/{only['id']}/view").json()["num_views"] == 2
  for v in range(2):
    assert client.get(f"/crops/uploads/{only['id']}.png", params={"view": v}).status_code == 200
  page = client.post("/upload", files=files)
  assert page.status_code == 200 and html.escape(want["report"]) in page.text
  assert page.text.count("/crops/uploads/") == 2
  one = client.post("/api/reports", files=files[:1])
  assert one.status_code == 400
  assert one.json()["error"] == "a study needs 2 images, one per view in order; 1 were sent"
  form = client.get("/upload").text
  assert "Select the 2 views of one study together" in form
