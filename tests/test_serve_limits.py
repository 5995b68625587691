"""--mode=serve's upload limits hold while the body streams in, chunked or not.

The app runs on a real uvicorn server over a stand-in engine (no model): these
tests are about what the app reads and stores, not what it decodes.
"""

import concurrent.futures
import io
import os
import tempfile
import types

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from micar_jax.data import images as images_lib  # noqa: E402
from micar_jax.serve import app as app_lib  # noqa: E402

MIB = 2**20
BOUNDARY = "micar-test-boundary"
# What uvicorn may have buffered for the app, beyond what the app asked for.
READ_SLACK = 256 * 2**10


class _StubEngine:
  """An Engine's surface the app uses, without a model: the report names the image's mean."""

  num_views = 1

  def __init__(self):
    self.stored = {}

  def warm_up(self, stop=None):
    del stop

  def preprocess(self, data):
    return images_lib.load(data, 8, 8)

  def submit(self, image):
    future = concurrent.futures.Future()
    future.set_result(types.SimpleNamespace(report=f"mean {float(np.mean(image)):.4f}"))
    return future

  def remember(self, key, value):
    self.stored[key] = value

  def recall(self, key):
    return self.stored.get(key)


@pytest.fixture
def limited(running_server, tmp_path, monkeypatch):
  """(client, consumed, spooled): an app of 2 files of 1 MiB at most.

  consumed() is how many body bytes the app received; spooled() the bytes of
  every temporary file created while it ran. Python's TemporaryFile opens
  nameless (O_TMPFILE) files on Linux, so it is swapped for a named one in a
  fresh folder, where their sizes can be read.
  """
  spool = tmp_path / "spool"
  spool.mkdir()
  named = tempfile.NamedTemporaryFile
  monkeypatch.setattr(tempfile, "tempdir", str(spool))
  monkeypatch.setattr(tempfile, "TemporaryFile",
                      lambda **kw: named(**dict(kw, dir=str(spool), delete=False)))
  received = []
  create_app = app_lib.create_app

  def counting_app(*args, **kwargs):
    app = create_app(*args, **kwargs)

    async def counted(scope, receive, send):
      async def receive_counted():
        message = await receive()
        if message["type"] == "http.request":
          received.append(len(message.get("body", b"")))
        return message
      await app(scope, receive_counted, send)
    return counted

  monkeypatch.setattr(app_lib, "create_app", counting_app)
  with running_server(_StubEngine(), str(tmp_path), max_upload_mb=1, max_files=2) as url:
    with httpx.Client(base_url=url, timeout=60) as client:
      yield (client, lambda: sum(received),
             lambda: sum(os.path.getsize(spool / n) for n in os.listdir(spool)))


def _part(field, data, filename=None, content_type="image/png"):
  disposition = f'form-data; name="{field}"'
  if filename is not None:
    disposition += f'; filename="{filename}"'
  head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
  if filename is not None:
    head += f"Content-Type: {content_type}\r\n"
  return head.encode() + b"\r\n", data


def _chunked(parts, chunk=64 * 2**10):
  """A generator of a multipart body (httpx sends it chunked: no Content-Length)."""
  def body():
    for head, data in parts:
      yield head
      for start in range(0, len(data), chunk):
        yield data[start:start + chunk]
      yield b"\r\n"
    yield f"--{BOUNDARY}--\r\n".encode()
  return body()


def _post_chunked(client, path, parts):
  return client.post(path, content=_chunked(parts),
                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def _png(value: int) -> bytes:
  out = io.BytesIO()
  Image.new("RGB", (12, 10), (value, value, value)).save(out, format="PNG")
  return out.getvalue()


def test_chunked_file_over_the_limit_is_refused_as_it_streams_and_never_spooled(limited):
  client, consumed, spooled = limited
  big = _part("files", b"\x89PNG" + bytes(10 * MIB), "big.png")
  for path in ("/api/reports", "/upload"):
    answer = _post_chunked(client, path, [big])
    assert answer.status_code == 413
    assert "big.png is larger than 1 MiB" in answer.text
  assert spooled() <= MIB
  assert consumed() <= 2 * (MIB + READ_SLACK)


def test_chunked_body_over_the_request_limit_is_refused(limited):
  client, consumed, spooled = limited
  # A form field is no file, but its bytes count towards the request's limit.
  answer = _post_chunked(client, "/api/reports", [_part("notes", bytes(10 * MIB))])
  assert answer.status_code == 413
  assert answer.json()["error"].startswith("upload of more than ")
  assert answer.json()["error"].endswith(" bytes exceeds 2 files of 1 MiB")
  assert consumed() <= 2 * MIB + 2**16 + READ_SLACK
  assert spooled() <= MIB


def test_file_over_the_limit_with_a_content_length_is_refused_before_it_is_read(limited):
  client, consumed, spooled = limited
  answer = client.post("/api/reports",
                       files=[("files", ("big.png", b"\x89PNG" + bytes(19 * MIB // 10), "image/png"))])
  assert answer.status_code == 413 and "big.png is larger than 1 MiB" in answer.json()["error"]
  assert spooled() <= MIB
  assert consumed() <= MIB + READ_SLACK
  # A declared length over the request's limit is refused unread.
  before = consumed()
  answer = client.post("/api/reports", files=[("files", ("huge.png", bytes(3 * MIB), "image/png"))])
  assert answer.status_code == 413
  assert answer.json()["error"] == f"upload of {answer.request.headers['content-length']} bytes " \
                                   "exceeds 2 files of 1 MiB"
  assert consumed() == before


def test_streamed_uploads_within_the_limits_are_read_in_order(limited):
  client, _, spooled = limited
  pngs = [_png(0), _png(255)]
  parts = [_part("files", pngs[0], "dark.png"), _part("notes", b"ignored"),
           _part("files", pngs[1], "light.png")]
  answer = _post_chunked(client, "/api/reports", parts)
  assert answer.status_code == 200, answer.text
  want = [f"mean {float(np.mean(images_lib.load(p, 8, 8))):.4f}" for p in pngs]
  assert [(r["name"], r["report"]) for r in answer.json()] == list(zip(["dark.png", "light.png"],
                                                                        want))
  # The same with a Content-Length.
  files = [("files", (n, p, "image/png")) for n, p in zip(["dark.png", "light.png"], pngs)]
  assert [r["report"] for r in client.post("/api/reports", files=files).json()] == want
  assert spooled() == 0


def test_streamed_upload_refusals_keep_their_messages(limited):
  client, _, _ = limited
  png = _png(9)
  cases = [
      ([_part("files", png, f"{i}.png") for i in range(3)], 413,
       "3 files in one upload; at most 2"),
      ([_part("files", b"hello", "notes.txt", "text/plain")], 415,
       "notes.txt: content type text/plain is not accepted"),
      ([_part("files", b"not a png", "broken.png")], 400, "broken.png is not a readable PNG image"),
      ([_part("other", png, "a.png")], 400, "no image uploaded"),
      # A form submitted with no file chosen sends an empty part without a name.
      ([_part("files", b"", "", "application/octet-stream")], 400, "no image uploaded"),
  ]
  for parts, status, message in cases:
    answer = _post_chunked(client, "/api/reports", parts)
    assert answer.status_code == status and message in answer.json()["error"], answer.text
  garbled = client.post("/api/reports", content=b"--elsewhere\r\nnonsense",
                        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
  assert garbled.status_code == 400 and "malformed multipart upload" in garbled.json()["error"]
