"""Restarts the program with an unlimited stack, for libtpu's compiler.

Compiling the full-size train step for a 256-chip topology (v6e-256) runs
libtpu's compiler past what an 8 MiB stack limit (`ulimit -s`, the usual
default) allows: the process dies with a segmentation fault. The same compile
finishes under `ulimit -s unlimited`. The limit shapes the main thread's stack
and, through glibc, the default size of every thread's stack, both fixed when
the process starts; so the program raises its soft limit and starts itself
again, once, with the command line it was given.
"""

import os
import resource
import sys

# Set in the restarted process, so that it never restarts again.
_RESTARTED = "MICAR_STACK_RESTARTED"


def restart_unlimited() -> None:
  """Re-executes this process with the stack's soft limit at its hard limit.

  Returns (doing nothing) when the soft limit is already the hard one, when the
  process was restarted before, or when the limit cannot be raised.
  """
  soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
  if soft == hard or os.environ.get(_RESTARTED):
    return
  try:
    resource.setrlimit(resource.RLIMIT_STACK, (hard, hard))
  except (ValueError, OSError):
    return
  os.environ[_RESTARTED] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
