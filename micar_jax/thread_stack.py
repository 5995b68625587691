"""The default stack size of threads created from now on (glibc), for XLA's compiler.

Compiling the full-size train step for a 256-chip topology (v6e-256) overflows
an 8 MiB thread stack inside libtpu's compiler and kills the process with a
segmentation fault. glibc sizes every thread's stack from the stack limit
(`ulimit -s`, 8 MiB by default) read once at process start, so raising the limit
afterwards changes nothing; `pthread_setattr_default_np` changes the default
for threads created afterwards, which includes the compiler's thread pools when
it runs before the first compile.
"""

import ctypes
import ctypes.util

# Larger than any pthread_attr_t (56 bytes on x86-64, 64 on aarch64).
_ATTR_BYTES = 128


def _libc() -> ctypes.CDLL | None:
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
  except OSError:
    return None
  needed = ("pthread_attr_init", "pthread_attr_destroy", "pthread_attr_getstacksize",
            "pthread_attr_setstacksize", "pthread_getattr_default_np",
            "pthread_setattr_default_np")
  return libc if all(hasattr(libc, f) for f in needed) else None


def default_stack_bytes() -> int | None:
  """The stack size new threads get, or None where it cannot be read (not glibc)."""
  libc = _libc()
  if libc is None:
    return None
  attr = ctypes.create_string_buffer(_ATTR_BYTES)
  size = ctypes.c_size_t()
  if libc.pthread_getattr_default_np(attr) != 0:
    return None
  try:
    if libc.pthread_attr_getstacksize(attr, ctypes.byref(size)) != 0:
      return None
    return size.value
  finally:
    libc.pthread_attr_destroy(attr)


def ensure_default_stack(min_bytes: int) -> int | None:
  """Raises the default thread stack to at least `min_bytes` (never lowers it).

  Returns:
    The default stack size in force afterwards, or None where it cannot be set
    (not glibc): callers go on with the system's default.
  """
  current = default_stack_bytes()
  if current is None or current >= min_bytes:
    return current
  libc = _libc()
  attr = ctypes.create_string_buffer(_ATTR_BYTES)
  if libc.pthread_getattr_default_np(attr) != 0:
    return current
  try:
    if (libc.pthread_attr_setstacksize(attr, ctypes.c_size_t(min_bytes)) != 0
        or libc.pthread_setattr_default_np(attr) != 0):
      return current
  finally:
    libc.pthread_attr_destroy(attr)
  return default_stack_bytes()
