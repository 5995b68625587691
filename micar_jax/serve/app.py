"""The web app's routes (FastAPI): test results, one example, uploads, and their JSON views.

  GET  /                          results (query: word, sort, order, min_score)
  GET  /examples/{i}              one test example
  GET  /upload, POST /upload      the upload form and its result page (HTML)
  POST /api/reports               uploads as JSON: [{name, id, report}]
  GET  /uploads/{id}              one uploaded image
  GET  /api/{examples|uploads}/{key}/view?layer=&head=   per-word view (explain's record)
  GET  /crops/{examples|uploads}/{key}.png?view=v         the crop the network saw (view v
                                                          of a study; 0 for single images)
  GET  /api/stats                 batches run and images decoded so far
  GET  /api/progress              the run's progress (step, epoch, last validation) and
                                  which best checkpoint step is served

While the run has no best checkpoint yet (it is training), the pages that need
the model answer 503 with a one-line message; the results page shows the
progress. Test results are read again when the run writes new ones.

With config.data.num_views = V > 1 every input is a study: the pages show its V
views side by side, each with its share of a word's attention, and one upload
request is one study, its V files in view order (400 for another count).

Bad uploads get a 4xx with a one-line message: 415 for a type other than PNG or
JPEG, 413 over config.serve.max_upload_mb per file or more than
config.serve.max_files files, 400 for no file or an undecodable image. The
limits hold while the body streams in (`micar_jax.serve.uploads`): a request
is refused as soon as it passes one, and no upload is written to disk.
"""

import asyncio
import contextlib
import os
import threading
import uuid
from typing import Any

import fastapi
import numpy as np
from fastapi import responses, staticfiles
from starlette import exceptions

from micar_jax import errors
from micar_jax.data import images as images_lib
from micar_jax.inference import explain_figure
from micar_jax.serve import engine as engine_lib
from micar_jax.serve import live as live_lib
from micar_jax.serve import pages, uploads
from micar_jax.serve import results as results_lib

CONTENT_TYPES = uploads.CONTENT_TYPES
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
UploadError = uploads.UploadError


def create_app(engine: engine_lib.Engine | live_lib.Live, workdir: str,
               max_upload_mb: float = 20.0, max_files: int = 64) -> fastapi.FastAPI:
  """The app over the run in `workdir`; compiles `engine`'s batch function on startup.

  Args:
    engine: decodes images (owned by the caller, who closes it); a `live.Live`
      also follows the run's best checkpoint while it trains.
    workdir: the run folder whose test/ outputs are listed.
    max_upload_mb: largest accepted file, in MiB.
    max_files: most files in one upload request.
  """
  live = engine if isinstance(engine, live_lib.Live) else live_lib.Live.of(engine, workdir)
  data_dir = getattr(live.config, "data_dir", None)
  limits = uploads.Limits(max_upload_mb, max_files)
  tested: dict[str, Any] = {"stamp": None, "res": results_lib.load(workdir, data_dir)}

  def current_results() -> results_lib.Results:
    """The test results, read again when the run (its final test) rewrote them."""
    stamp = []
    for name in ("scores.json", "examples.jsonl", "generated_reports.csv"):
      try:
        info = os.stat(os.path.join(workdir, "test", name))
        stamp.append((info.st_mtime_ns, info.st_size))
      except OSError:
        stamp.append(None)
    if tested["stamp"] is None:
      tested["stamp"] = stamp
    elif stamp != tested["stamp"]:
      try:
        tested["res"], tested["stamp"] = results_lib.load(workdir, data_dir), stamp
      except (OSError, ValueError, TypeError):
        pass  # still being written: the previous results until it is whole
    return tested["res"]

  def current_engine() -> engine_lib.Engine:
    if live.engine is None:
      raise fastapi.HTTPException(503, live.error or (
          f"the run in {workdir} has no best checkpoint yet; this page works once training "
          "saves one (see / for its progress)"))
    return live.engine

  @contextlib.asynccontextmanager
  async def lifespan(_):
    # Compiling in the background keeps the first page fast; requests queue behind it.
    stop = threading.Event()
    warm_up = threading.Thread(target=live.run, args=(stop,), name="warm-up", daemon=True)
    warm_up.start()
    yield
    # An XLA compile cannot be interrupted; exiting under it aborts the process.
    stop.set()
    await asyncio.to_thread(warm_up.join)

  app = fastapi.FastAPI(title="micar_jax", lifespan=lifespan, docs_url=None, redoc_url=None)
  app.mount("/static", staticfiles.StaticFiles(directory=STATIC_DIR), name="static")
  html = responses.HTMLResponse

  def example_or_404(index: int) -> results_lib.Example:
    example = current_results().get(index)
    if example is None:
      raise fastapi.HTTPException(404, f"no test example {index}")
    return example

  def upload_or_404(uid: str) -> tuple[str, engine_lib.Decoded]:
    found = current_engine().recall(("upload", uid))
    if found is None:
      raise fastapi.HTTPException(404, f"no upload {uid} (uploads are kept in memory only)")
    return found

  async def decode(image) -> engine_lib.Decoded:
    return await asyncio.wrap_future(current_engine().submit(image))

  async def example_decoded(index: int) -> engine_lib.Decoded:
    example = example_or_404(index)
    engine = current_engine()
    # Keyed by the served step: a newer best checkpoint decodes the example afresh.
    key = ("example", index, live.best_step)
    decoded = engine.recall(key)
    if decoded is None:
      try:
        image = await asyncio.to_thread(engine.preprocess, example.image)
      except images_lib.ImageError as e:
        raise fastapi.HTTPException(404, str(e)) from None
      decoded = await decode(image)
      engine.remember(key, decoded)
    return decoded

  async def read_uploads(request: fastapi.Request) -> list[tuple[str, Any]]:
    """(file name, float32 [S, S, 3]) per file of a multipart upload, all of them valid;
    for a multi-view config one study: ("name + name", float32 [V, S, S, 3]).

    Raises:
      UploadError: any file is refused (none is decoded by the model then).
    """
    engine = current_engine()
    loaded = []
    async with contextlib.aclosing(
        uploads.read_files(request.headers, request.stream(), limits)) as files:
      async for f in files:
        try:
          # Decoding and resizing off the event loop keeps other requests flowing; each
          # file is preprocessed as soon as it is whole, so only one is held as bytes.
          loaded.append((f.name, await asyncio.to_thread(engine.preprocess, f.data)))
        except images_lib.ImageError:
          raise UploadError(400, f"{f.name} is not a readable "
                            f"{f.content_type.split('/')[1].upper()} image") from None
    if not loaded:
      raise UploadError(400, uploads.NO_FILE)
    if engine.num_views == 1:
      return loaded
    if len(loaded) != engine.num_views:
      raise UploadError(400, f"a study needs {engine.num_views} images, one per view in "
                        f"order; {len(loaded)} were sent")
    return [(" + ".join(name for name, _ in loaded), np.stack([image for _, image in loaded]))]

  async def report_uploads(request: fastapi.Request) -> list[tuple[str, str, str]]:
    """(name, id, report) per uploaded file, decoded together with concurrent requests."""
    loaded = await read_uploads(request)
    decoded = await asyncio.gather(*(decode(image) for _, image in loaded))
    out = []
    for (name, _), d in zip(loaded, decoded):
      uid = uuid.uuid4().hex[:12]
      current_engine().remember(("upload", uid), (name, d))
      out.append((name, uid, d.report))
    return out

  @app.exception_handler(UploadError)
  async def upload_error(request: fastapi.Request, e: UploadError):
    if request.url.path.startswith("/api/"):
      return responses.JSONResponse({"error": str(e)}, status_code=e.status)
    views = live.engine.num_views if live.engine is not None else 1
    return html(pages.upload_form(str(e), views), status_code=e.status)

  @app.exception_handler(exceptions.HTTPException)
  async def http_error(request: fastapi.Request, e: exceptions.HTTPException):
    if request.url.path.startswith(("/api/", "/crops/")):
      return responses.JSONResponse({"error": e.detail}, status_code=e.status_code)
    if e.status_code == 503:
      return html(pages.not_ready(str(e.detail)), status_code=503)
    return html(pages.not_found(str(e.detail)), status_code=e.status_code)

  @app.get("/", response_class=html)
  def results_page(word: str = "", sort: str = "index", order: str = "asc",
                   min_score: str = ""):
    res = current_results()
    sort = sort if sort in res.score_keys else "index"
    order = order if order in results_lib.ORDERS else "asc"
    try:
      threshold = float(min_score) if min_score.strip() else None
    except ValueError:
      threshold = None
    shown = results_lib.select(res.examples, word, sort, order, threshold)
    return pages.results_page(res, shown, word, sort, order, threshold,
                              pages.progress_panel(live.status()))

  @app.get("/examples/{index}", response_class=html)
  def example_page(index: int):
    res = current_results()
    example = example_or_404(index)
    position = res.examples.index(example)
    neighbour = lambda i: res.examples[i].index if 0 <= i < len(res.examples) else None
    return pages.example_page(example, res.score_keys, neighbour(position - 1),
                              neighbour(position + 1))

  @app.get("/upload", response_class=html)
  def upload_form():
    return pages.upload_form(num_views=current_engine().num_views)

  @app.post("/upload", response_class=html)
  async def upload(request: fastapi.Request):
    return pages.uploaded_page(await report_uploads(request), current_engine().num_views)

  @app.post("/api/reports")
  async def api_reports(request: fastapi.Request):
    return [{"name": name, "id": uid, "report": report}
            for name, uid, report in await report_uploads(request)]

  @app.get("/uploads/{uid}", response_class=html)
  def upload_page(uid: str):
    name, decoded = upload_or_404(uid)
    return pages.upload_page(uid, name, decoded.report, _views(decoded.crop))

  def view(decoded: engine_lib.Decoded, layer: str, head: str) -> dict[str, Any]:
    engine = current_engine()
    layer, head = layer or engine.default_layer, head or engine.default_head
    try:
      return engine.view(decoded, layer, head)
    except errors.UserError as e:
      raise fastapi.HTTPException(400, str(e)) from None

  @app.get("/api/examples/{index}/view")
  async def example_view(index: int, layer: str = "", head: str = ""):
    decoded = await example_decoded(index)
    return view(decoded, layer, head)

  @app.get("/api/uploads/{uid}/view")
  def upload_view(uid: str, layer: str = "", head: str = ""):
    return view(upload_or_404(uid)[1], layer, head)

  png = lambda crop: responses.Response(engine_lib.png_bytes(crop), media_type="image/png",
                                        headers={"Cache-Control": "max-age=3600"})

  def one_view(views: Any, view: int, what: str) -> Any:
    """Item `view` of a study's views; a single image is view 0 of one."""
    views = views if isinstance(views, list) else [views]
    if not 0 <= view < len(views):
      raise fastapi.HTTPException(404, f"{what} has no view {view} (views 0-{len(views) - 1})")
    return views[view]

  @app.get("/crops/examples/{index}.png")
  def example_crop(index: int, view: int = 0):
    path = one_view(example_or_404(index).image, view, f"test example {index}")
    try:
      image = current_engine().preprocess(path)
    except images_lib.ImageError as e:
      raise fastapi.HTTPException(404, str(e)) from None
    return png(explain_figure.unnormalise(image))

  @app.get("/crops/uploads/{uid}.png")
  def upload_crop(uid: str, view: int = 0):
    crop = upload_or_404(uid)[1].crop
    return png(one_view(list(crop) if crop.ndim == 4 else crop, view, f"upload {uid}"))

  @app.get("/api/progress")
  def progress():
    return live.status()

  @app.get("/api/stats")
  def stats():
    engine = current_engine()
    return {"batches": engine.batcher.calls, "images": engine.batcher.rows,
            "batch_sizes": engine.batcher.sizes}

  return app


def _views(crop: Any) -> int:
  """How many views a `Decoded.crop` holds ([S, S, 3] or [V, S, S, 3])."""
  return crop.shape[0] if crop.ndim == 4 else 1
