"""One run per workdir: an advisory lock that train/test/predict/explain hold.

The lock is `fcntl.flock` on DIR/.lock.<process index>, so the kernel releases
it when the holder exits or is killed (kill -9 leaves no stale lock), and each
process of a multi-host run takes its own file. The holder writes its PID, host
and mode into the file so that a refused process can say who holds it. flock
is advisory and local to one machine's kernel on some network filesystems
(older NFS): there it does not stop a run started on another machine.

`--mode=serve` only reads a workdir and takes no lock, so it can browse a run
that trains; `holder` tells it who holds the lock without touching it (a
probe with flock, however brief, could refuse a trainer starting meanwhile).
"""

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Any, Iterator

from micar_jax import errors


def lock_path(workdir: str, process_index: int) -> str:
  return os.path.join(workdir, f".lock.{process_index}")


def _holder(fd: int) -> str:
  """'pid 123 on host h, mode train' from the lock file, or a generic phrase."""
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    return f"{info['mode']} (pid {info['pid']} on host {info['host']})"
  except (OSError, ValueError, KeyError, UnicodeDecodeError):
    return "another process (still starting)"


def holder(workdir: str, process_index: int = 0) -> dict[str, Any] | None:
  """{pid, host, mode, since} of the process holding the lock, or None (read-only).

  Read from the lock file, which a holder empties when it ends; a holder killed
  with SIGKILL leaves its record, so a PID of this host that no longer runs
  counts as no holder.
  """
  try:
    with open(lock_path(workdir, process_index), encoding="utf-8") as f:
      info = json.loads(f.read(4096))
    pid, host = int(info["pid"]), str(info["host"])
  except (OSError, ValueError, KeyError, TypeError):
    return None  # no file, an empty one (released), or a holder still writing it
  if host == socket.gethostname():
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return None
    except PermissionError:
      pass  # another user's live process
  return info


@contextlib.contextmanager
def hold(workdir: str, mode: str, process_index: int = 0) -> Iterator[None]:
  """Holds the workdir's lock for the duration of the block.

  Raises:
    errors.UserError: another live process holds it (one line naming its PID and host).
  """
  path = lock_path(workdir, process_index)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise errors.UserError(
          f"workdir {workdir} is in use by {_holder(fd)}; wait for it to end or use another "
          "--workdir") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "mode": mode,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    try:
      yield
    finally:
      # The file stays: removing it would let a third process lock a new inode
      # while a second one still waits on the old.
      os.ftruncate(fd, 0)
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
