"""Upload throughput of a running `--mode=serve`: N concurrent uploads vs the same N one at a time.

  python -m micar_jax.tools.serve_load --url=http://127.0.0.1:8080 --images=DIR [--n=20]

Each request uploads one image (cycling through the PNG/JPEG files of DIR).
Prints reports/s for both ways and the batches the server ran for each
(from /api/stats). Standard library only, so it runs without the serve extra.
"""

import concurrent.futures
import json
import os
import time
import urllib.request
import uuid

from absl import flags

from micar_jax import cli, errors

flags.DEFINE_string("url", "http://127.0.0.1:8080", "Base URL of the server.")
flags.DEFINE_string("images", None, "Folder of PNG/JPEG images to upload.")
flags.DEFINE_integer("n", 20, "Uploads per measurement.")
FLAGS = flags.FLAGS

TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def upload(url: str, path: str) -> str:
  """POSTs one image to /api/reports; returns its report."""
  boundary = uuid.uuid4().hex
  with open(path, "rb") as f:
    data = f.read()
  head = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
          f'filename="{os.path.basename(path)}"\r\nContent-Type: '
          f"{TYPES[os.path.splitext(path)[1].lower()]}\r\n\r\n").encode()
  request = urllib.request.Request(
      url + "/api/reports", data=head + data + f"\r\n--{boundary}--\r\n".encode(),
      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
  with urllib.request.urlopen(request, timeout=600) as response:
    return json.load(response)[0]["report"]


def batches(url: str) -> int:
  with urllib.request.urlopen(url + "/api/stats", timeout=60) as response:
    return json.load(response)["batches"]


def measure(url: str, paths: list[str], together: bool) -> tuple[float, int]:
  """(reports per second, batches run) for uploading `paths`."""
  before, start = batches(url), time.perf_counter()
  if together:
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
      list(pool.map(lambda p: upload(url, p), paths))
  else:
    for p in paths:
      upload(url, p)
  return len(paths) / (time.perf_counter() - start), batches(url) - before


def main(argv) -> None:
  cli.expect_no_arguments(argv)
  if not FLAGS.images or not os.path.isdir(FLAGS.images):
    raise errors.UserError("--images must be a folder of PNG/JPEG files")
  files = sorted(os.path.join(FLAGS.images, n) for n in os.listdir(FLAGS.images)
                 if os.path.splitext(n)[1].lower() in TYPES)
  if not files:
    raise errors.UserError(f"no PNG/JPEG files in {FLAGS.images}")
  paths = [files[i % len(files)] for i in range(FLAGS.n)]
  upload(FLAGS.url, paths[0])  # the server compiles before its first answer
  for name, together in (("one at a time", False), ("concurrent", True)):
    rate, ran = measure(FLAGS.url, paths, together)
    print(f"{name}: {FLAGS.n} uploads, {rate:.2f} reports/s, {ran} batches")


if __name__ == "__main__":
  cli.run(main)
