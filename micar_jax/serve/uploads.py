"""Multipart uploads read as they stream in, never past the app's limits.

Starlette's form parser would spool every file over 1 MB to a temporary file,
whole, before the app could look at its size; a chunked request (no
Content-Length) would be read to its end that way. Here the body is parsed
chunk by chunk (python-multipart) with a running count:

- a Content-Length over the request's limit is refused before anything is read;
- the body is refused as soon as its bytes pass `Limits.request_bytes`
  (the files allowed, plus MULTIPART_OVERHEAD for headers and form fields);
- a file is refused as soon as its bytes pass `Limits.file_bytes`, a file of
  another type as soon as its headers end, one file too many as soon as it begins.

Nothing touches the disk: only the file being read is held in memory (at most
the per-file limit and one chunk), and each finished file is handed on at once.
Form fields other than the `files` field's files are counted, never kept.
"""

import dataclasses
import os
from collections.abc import AsyncIterator, Mapping

from python_multipart import exceptions as multipart_errors
from python_multipart import multipart

CONTENT_TYPES = ("image/png", "image/jpeg")
# Room for the multipart boundaries, part headers and small form fields.
MULTIPART_OVERHEAD = 2**16
NO_FILE = "no image uploaded: send one or more files in the 'files' field"


class UploadError(Exception):
  """A rejected upload: an HTTP status and a one-line message."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
  """What one upload request may hold: `files` files of `file_mib` MiB each at most."""
  file_mib: float
  files: int

  @property
  def file_bytes(self) -> int:
    return int(self.file_mib * 2**20)

  @property
  def request_bytes(self) -> int:
    return self.file_bytes * self.files + MULTIPART_OVERHEAD

  def too_large(self, what: str) -> UploadError:
    return UploadError(413, f"upload of {what} bytes exceeds {self.files} files of "
                       f"{self.file_mib:g} MiB")


@dataclasses.dataclass(frozen=True)
class File:
  """One uploaded file: its base name, its declared type (png/jpeg) and its bytes."""
  name: str
  content_type: str
  data: bytes


class _Parts:
  """python-multipart's callbacks: checks each part as it arrives, keeps the files finished."""

  def __init__(self, limits: Limits):
    self.limits = limits
    self.files = 0
    self.finished: list[File] = []
    self._start_part()

  def _start_part(self) -> None:
    self.headers: dict[bytes, bytes] = {}
    self.field, self.value = b"", b""
    self.file: tuple[str, str] | None = None  # (name, type) while reading a file part
    self.data = bytearray()

  def callbacks(self) -> dict:
    return {"on_part_begin": self._start_part, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end}

  def _header_field(self, data: bytes, start: int, end: int) -> None:
    self.field += data[start:end]

  def _header_value(self, data: bytes, start: int, end: int) -> None:
    self.value += data[start:end]

  def _header_end(self) -> None:
    self.headers[self.field.strip().lower()] = self.value.strip()
    self.field, self.value = b"", b""

  def _headers_finished(self) -> None:
    _, options = multipart.parse_options_header(self.headers.get(b"content-disposition"))
    # A browser form with no file chosen sends an empty filename: no file then.
    if options.get(b"name") != b"files" or not options.get(b"filename"):
      return
    name = os.path.basename(options[b"filename"].decode("utf-8", "replace")) or "image"
    kind = multipart.parse_options_header(self.headers.get(b"content-type"))[0].decode("latin-1")
    if kind not in CONTENT_TYPES:
      raise UploadError(415, f"{name}: content type {kind or 'unknown'} is not accepted; "
                        "upload PNG or JPEG images")
    self.files += 1
    if self.files > self.limits.files:
      raise UploadError(413, f"{self.files} files in one upload; at most {self.limits.files}")
    self.file = (name, kind)

  def _part_data(self, data: bytes, start: int, end: int) -> None:
    if self.file is None:
      return
    self.data += data[start:end]
    if len(self.data) > self.limits.file_bytes:
      raise UploadError(413, f"{self.file[0]} is larger than {self.limits.file_mib:g} MiB")

  def _part_end(self) -> None:
    if self.file is not None:
      self.finished.append(File(*self.file, bytes(self.data)))
    self._start_part()


async def read_files(headers: Mapping[str, str], body: AsyncIterator[bytes],
                     limits: Limits) -> AsyncIterator[File]:
  """The files of a multipart/form-data request's `files` field, each as soon as it is whole.

  Args:
    headers: the request's headers (Content-Type, Content-Length).
    body: the request body's chunks as they arrive (Starlette's `request.stream()`).
    limits: the sizes allowed.

  Raises:
    UploadError: 413 over a limit, 415 a file of another type, 400 a body that is
      not multipart or is malformed. Nothing more of the body is read then.
  """
  length = headers.get("content-length")
  if length is not None and (not length.isdigit() or int(length) > limits.request_bytes):
    raise limits.too_large(length)
  kind, options = multipart.parse_options_header(headers.get("content-type"))
  if kind != b"multipart/form-data" or not options.get(b"boundary"):
    raise UploadError(400, NO_FILE)
  parts = _Parts(limits)
  try:
    parser = multipart.MultipartParser(options[b"boundary"], parts.callbacks())
  except multipart_errors.FormParserError as e:
    raise UploadError(400, f"malformed multipart upload: {e}") from None
  received = 0
  async for chunk in body:
    received += len(chunk)
    if received > limits.request_bytes:
      raise limits.too_large(f"more than {limits.request_bytes}")
    try:
      parser.write(chunk)
    except multipart_errors.FormParserError as e:
      raise UploadError(400, f"malformed multipart upload: {e}") from None
    while parts.finished:
      yield parts.finished.pop(0)
  if parser.state != multipart.MultipartState.END:
    raise UploadError(400, "malformed multipart upload: the body ends before its closing boundary")
