"""--mode=serve: results pages, per-word views equal to explain's, uploads equal to predict's."""

import concurrent.futures
import html
import io
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from micar_jax import errors, evaluate  # noqa: E402
from micar_jax.inference import explain, predict  # noqa: E402
from micar_jax.serve import server  # noqa: E402
from micar_jax.tools import serve_load  # noqa: E402


@pytest.fixture(scope="module")
def client(served, running_server):
  _, workdir, engine, _ = served
  with running_server(engine, workdir, max_upload_mb=0.5) as url:
    with httpx.Client(base_url=url, timeout=120) as c:
      yield c


def _png(path) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def test_results_page_lists_every_test_example_with_scores(served, client):
  _, workdir, _, _ = served
  examples = [json.loads(l) for l in open(os.path.join(workdir, "test", "examples.jsonl"))]
  assert len(examples) == 4
  assert {"ref/rougeL", "coco/cider"} <= set(examples[0]["scores"])
  page = client.get("/")
  assert page.status_code == 200
  assert "Corpus scores" in page.text and "ref/bleu4" in page.text
  for e in examples:
    assert f'href="/examples/{e["index"]}"' in page.text
  by_rouge = client.get("/", params={"sort": "ref/rougeL", "order": "desc"}).text
  order = sorted(examples, key=lambda e: -e["scores"]["ref/rougeL"])
  positions = [by_rouge.index(f'id="ex{e["index"]}"') for e in order]
  assert positions == sorted(positions)
  word = examples[0]["reference"].split()[0]
  filtered = client.get("/", params={"word": word}).text
  kept = [e for e in examples if word in (e["generated"] + " " + e["reference"]).split()]
  assert f"{len(kept)} of 4 examples" in filtered
  example = client.get(f"/examples/{examples[1]['index']}")
  assert example.status_code == 200 and 'id="viewer"' in example.text
  missing = client.get("/examples/99")
  assert missing.status_code == 404 and "no test example 99" in missing.text
  assert client.get("/nowhere").status_code == 404
  crop = client.get(f"/crops/examples/{examples[0]['index']}.png")
  assert crop.headers["content-type"] == "image/png"
  assert Image.open(io.BytesIO(crop.content)).size == (32, 32)


@pytest.mark.parametrize("layer,head", [("mean", "mean"), ("0", "-1")])
def test_word_attention_equals_explain(served, client, layer, head):
  config, workdir, _, _ = served
  record = json.loads(open(os.path.join(workdir, "test", "examples.jsonl")).readline())
  view = client.get(f"/api/examples/{record['index']}/view",
                    params={"layer": layer, "head": head}).json()
  cfg = config.copy_and_resolve_references()
  cfg.eval.explain_layers, cfg.eval.explain_heads = layer, head
  # Stored relative to the data folder; explain takes a file path.
  explain.explain(cfg, workdir, [evaluate.resolve_image(record["image"], workdir, config.data_dir)])
  stem = os.path.splitext(os.path.basename(record["image"]))[0]
  want = json.load(open(os.path.join(workdir, "explain", stem + ".json")))
  assert view["words"] == want["words"]
  assert np.asarray(view["attention"]).shape[0] == len(want["words"])
  np.testing.assert_array_equal(view["attention"], want["attention"])
  np.testing.assert_array_equal(view["experts"], want["experts"])
  assert client.get(f"/api/examples/{record['index']}/view",
                    params={"layer": "9"}).status_code == 400


def test_upload_returns_the_predict_report(served, client):
  config, workdir, _, tmp = served
  images = tmp / "mine"
  images.mkdir(exist_ok=True)
  names = ["a.png", "b.png"]
  for i, name in enumerate(names):
    shutil.copy(tmp / "data" / "images" / f"test_00000{i}.png", images / name)
  # An upload's report is predict's for that image on its own (batch company never changes it).
  want = [json.loads(open(predict.predict(config, workdir, [str(images / n)])).readline())["report"]
          for n in names]
  files = [("files", (n, _png(images / n), "image/png")) for n in names]
  got = client.post("/api/reports", files=files)
  assert got.status_code == 200
  assert [r["report"] for r in got.json()] == want
  uid = got.json()[0]["id"]
  assert client.get(f"/uploads/{uid}").status_code == 200
  assert client.get(f"/api/uploads/{uid}/view").json()["generated"] == want[0]
  page = client.post("/upload", files=files[:1])
  assert page.status_code == 200 and html.escape(want[0]) in page.text


def test_bad_uploads_get_a_4xx_with_a_message(served, client):
  _, _, _, tmp = served
  png = _png(tmp / "data" / "images" / "test_000000.png")
  cases = [
      ([("files", ("notes.txt", b"hello", "text/plain"))], 415, "content type text/plain"),
      ([("files", ("big.png", b"\x89PNG" + bytes(600_000), "image/png"))], 413, "larger than"),
      ([("files", ("broken.png", b"not a png", "image/png"))], 400, "not a readable PNG"),
      ([("other", ("a.png", png, "image/png"))], 400, "no image uploaded"),
  ]
  for files, status, message in cases:
    api = client.post("/api/reports", files=files)
    assert api.status_code == status and message in api.json()["error"]
    form = client.post("/upload", files=files)
    assert form.status_code == status and message in form.text


def test_concurrent_uploads_are_batched_without_recompiling(served, running_server):
  _, workdir, engine, tmp = served
  pngs = [_png(tmp / "data" / "images" / f"test_00000{i % 4}.png") for i in range(20)]
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if "compile" in event else None
  with running_server(engine, workdir) as url, httpx.Client(base_url=url, timeout=120) as http:
    solo = [http.post("/api/reports", files=[("files", ("x.png", p, "image/png"))]).json()[0]
            ["report"] for p in pngs[:4]]
    calls_before = engine.batcher.calls
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
      with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda p: http.post(
            "/api/reports", files=[("files", ("x.png", p, "image/png"))]), pngs))
    finally:
      jax.monitoring.unregister_event_duration_listener(listener)
    stats = http.get("/api/stats").json()
  assert [a.status_code for a in answers] == [200] * 20
  assert [a.json()[0]["report"] for a in answers] == [solo[i % 4] for i in range(20)]
  batches = stats["batches"] - calls_before
  assert 1 <= batches < 20
  assert not compiles


def test_serve_needs_the_extra_and_a_free_port(served, monkeypatch):
  config, workdir, _, _ = served
  sock = server.listen("127.0.0.1", 0)
  with pytest.raises(errors.UserError, match="cannot listen on 127.0.0.1"):
    server.listen("127.0.0.1", sock.getsockname()[1])
  sock.close()
  monkeypatch.setitem(sys.modules, "uvicorn", None)
  with pytest.raises(errors.UserError, match=r"serve extra \(uvicorn is not installed\)"):
    server.serve(config, workdir, "127.0.0.1", 0)


def test_core_package_does_not_import_the_web_stack():
  code = ("import sys, micar_jax.main, micar_jax.training.train, micar_jax.inference.predict, micar_jax.inference.explain; "
          "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.stdout.strip() == "[]"


def test_cli_serves_the_run_until_interrupted(served):
  _, workdir, _, tmp = served
  args = ["--config=configs/synthetic.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={tmp / 'data'}", "--config.data.synthetic_sizes=(16,4,4)",
          "--config.data.text_seq_len=12", "--config.mesh.num_devices=1",
          "--mode=serve", "--port=0"]
  proc = subprocess.Popen([sys.executable, "-m", "micar_jax.main", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = ""
    while proc.poll() is None and not line.startswith("serving"):
      line = proc.stdout.readline()
    assert line.startswith("serving"), proc.stderr.read()
    url = line.split(" on ")[1].split()[0]
    page = httpx.get(url, timeout=60)
    assert page.status_code == 200 and 'href="/examples/' in page.text
  finally:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130 and err.strip().endswith("interrupted by SIGINT"), err


def test_serve_load_tool_uploads_one_at_a_time_and_together(served, client):
  _, _, _, tmp = served
  paths = [str(tmp / "data" / "images" / f"test_00000{i}.png") for i in range(4)]
  url = str(client.base_url).rstrip("/")
  assert serve_load.upload(url, paths[0]) == client.post(
      "/api/reports", files=[("files", ("a.png", _png(paths[0]), "image/png"))]).json()[0]["report"]
  rate, batches = serve_load.measure(url, paths, together=False)
  assert rate > 0 and batches == 4
  rate, batches = serve_load.measure(url, paths, together=True)
  assert rate > 0 and 1 <= batches <= 4
