"""--mode=serve in headless Chromium: pages without JavaScript, the per-word view, an upload.

Runs only where Debian's chromium (/usr/bin/chromium) and the playwright
package are installed; playwright drives that browser, it downloads none.

The README screenshot: `MICAR_SERVE_SCREENSHOT=docs/serve.png` saves the
example page there; `MICAR_SERVE_RUN=DIR` (with `MICAR_SERVE_CONFIG`, default
configs/synthetic.py) serves that trained and tested run instead of the tiny
untrained one:

  python -m micar_jax.main --config=configs/synthetic.py --workdir=runs/synthetic \
      --config.train.epochs=3
  MICAR_SERVE_RUN=runs/synthetic MICAR_SERVE_SCREENSHOT=docs/serve.png \
      python -m pytest tests/test_serve_browser.py
"""

import io
import os
import shutil

import pytest
from PIL import Image

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api")

from micar_jax.serve import engine as engine_lib  # noqa: E402
from micar_jax.serve import results as results_lib  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Generous: the first per-word view may wait for a compile on a busy CI machine.
TIMEOUT_MS = 300_000
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="no chromium installed")]


@pytest.fixture(scope="module")
def site(request, load_config, running_server):
  """(base URL, workdir, engine) of a running server."""
  run_dir = os.environ.get("MICAR_SERVE_RUN")
  if run_dir:
    config = load_config(os.environ.get("MICAR_SERVE_CONFIG", "configs/synthetic.py"))
    engine = engine_lib.Engine(config, run_dir, max_wait_s=0.02)
    workdir = run_dir
  else:
    _, workdir, engine, _ = request.getfixturevalue("served")
  try:
    with running_server(engine, workdir) as url:
      yield url, workdir, engine
  finally:
    if run_dir:
      engine.close()


@pytest.fixture(scope="module")
def browser():
  with playwright_api.sync_playwright() as p:
    b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield b
    b.close()


def test_results_and_example_pages_work_without_javascript(site, browser):
  url, workdir, engine = site
  res = results_lib.load(workdir, engine.config.data_dir)
  context = browser.new_context(java_script_enabled=False)
  context.set_default_timeout(TIMEOUT_MS)
  page = context.new_page()
  page.goto(url + "/")
  assert page.locator("table.examples tbody tr").count() == len(res.examples)
  word = results_lib.words(res.examples[0].reference)[0]
  page.fill("input[name=word]", word)
  page.click("form.filters button")
  assert f"word={word}" in page.url
  assert page.locator("table.examples tbody tr").count() == len(
      results_lib.select(res.examples, word))
  page.click("table.examples tbody tr:first-child td a")
  assert page.locator("section.compare h2").all_inner_texts() == ["generated", "reference"]
  context.close()


def test_hovering_a_word_shows_its_attention_and_experts(site, browser):
  url, workdir, engine = site
  res = results_lib.load(workdir, engine.config.data_dir)
  page = browser.new_page(viewport={"width": 1100, "height": 640})
  page.set_default_timeout(TIMEOUT_MS)
  index = max(res.examples, key=lambda e: len(e.generated.split())).index
  page.goto(f"{url}/examples/{index}")
  page.wait_for_selector("#viewer[data-ready=true]", timeout=TIMEOUT_MS)
  words = page.locator("#words button.word")
  assert words.count() >= 1
  texts = words.all_inner_texts()
  words.nth(texts.index(max(texts, key=len))).hover()  # a content word, for the screenshot
  painted = page.evaluate("""() => {
      const c = document.querySelector('canvas.overlay');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n / (d.length / 4);
  }""")
  assert painted > 0.99
  assert page.locator("#experts .layer").count() == engine.num_layers
  assert page.locator("#experts .expert.chosen").count() == engine.num_layers * (
      engine.run.model_config.top_k)
  page.select_option("#head", "0")
  page.wait_for_function("!document.getElementById('viewer').classList.contains('loading')")
  shot = os.environ.get("MICAR_SERVE_SCREENSHOT")
  if shot:
    # A 128-colour palette keeps the README image small.
    Image.open(io.BytesIO(page.screenshot())).convert("RGB").quantize(128).save(shot, optimize=True)
  page.close()


def test_uploading_an_image_gives_a_report_and_its_view(site, browser, tmp_path):
  url, workdir, engine = site
  image = results_lib.load(workdir, engine.config.data_dir).examples[0].image
  page = browser.new_page()
  page.set_default_timeout(TIMEOUT_MS)
  page.goto(url + "/upload")
  page.set_input_files("input[type=file]", image)
  page.click("form.upload button")
  assert page.locator("ul.uploads li").count() == 1
  page.click("ul.uploads li a")
  page.wait_for_selector("#viewer[data-ready=true]", timeout=TIMEOUT_MS)
  assert page.locator("#words button.word").count() >= 1
  page.goto(url + "/upload")
  bad = tmp_path / "notes.txt"
  bad.write_text("not an image")
  page.set_input_files("input[type=file]", str(bad))
  page.click("form.upload button")
  assert "is not accepted" in page.locator(".error").inner_text()
  page.close()


@pytest.fixture(scope="module")
def two_view_site(tested_two_view_run, running_server):
  """(base URL, workdir) of a tested two-view tiny run being served."""
  folder, config = tested_two_view_run("browser_two_view")
  workdir = str(folder / "run")
  engine = engine_lib.Engine(config, workdir, max_wait_s=0.02)
  try:
    with running_server(engine, workdir) as url:
      yield url, workdir
  finally:
    engine.close()


def test_a_word_of_a_study_paints_every_view_with_its_share(two_view_site, browser):
  url, workdir = two_view_site
  index = results_lib.load(workdir).examples[0].index
  page = browser.new_page(viewport={"width": 1240, "height": 700})
  page.set_default_timeout(TIMEOUT_MS)
  page.goto(f"{url}/examples/{index}")
  page.wait_for_selector("#viewer[data-ready=true]", timeout=TIMEOUT_MS)
  page.locator("#words button.word").first.hover()
  painted = page.evaluate("""() => [...document.querySelectorAll('canvas.overlay')].map(c => {
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n / (d.length / 4);
  })""")
  assert len(painted) == 2 and min(painted) > 0.99
  shares = [int(t.split("%")[0]) for t in page.locator("figcaption .share").all_inner_texts()]
  assert len(shares) == 2 and 99 <= sum(shares) <= 101
  page.close()
