"""thread_stack: threads created after the call get the larger stack; it never shrinks."""

import subprocess
import sys
import textwrap

import pytest

from micar_jax import thread_stack

pytestmark = pytest.mark.skipif(thread_stack.default_stack_bytes() is None,
                                reason="needs glibc's pthread_{get,set}attr_default_np")

# Runs in a fresh process: the default is process-wide and would leak into other tests.
_PROBE = textwrap.dedent("""
    import ctypes, threading
    from micar_jax import thread_stack
    before = thread_stack.default_stack_bytes()
    after = thread_stack.ensure_default_stack(before * 4)
    again = thread_stack.ensure_default_stack(before)  # smaller: leaves it alone
    libc = ctypes.CDLL("libc.so.6")
    libc.pthread_self.restype = ctypes.c_ulong
    seen = []
    def probe():
      attr = ctypes.create_string_buffer(128)
      libc.pthread_getattr_np(ctypes.c_ulong(libc.pthread_self()), attr)
      size = ctypes.c_size_t()
      libc.pthread_attr_getstacksize(attr, ctypes.byref(size))
      seen.append(size.value)
    t = threading.Thread(target=probe)
    t.start()
    t.join()
    print(before, after, again, seen[0])
""")


def test_threads_started_afterwards_get_the_larger_stack_and_it_never_shrinks():
  out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                       timeout=60, check=True).stdout
  before, after, again, thread = map(int, out.split())
  assert after == again == 4 * before
  assert thread >= 4 * before
