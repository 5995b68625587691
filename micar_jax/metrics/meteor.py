"""METEOR 1.5 (the Java jar shipped with pycocoevalcap), driven with time limits.

pycocoevalcap's own `Meteor` wrapper reads the JVM's replies with blocking
`readline` calls and takes a lock it never releases when a reply is garbage,
so a JVM that dies or stalls hangs the process (its `__del__` then waits on
that lock too). This driver speaks the same stdio protocol, line for line, so
the scores are identical, but every read and write waits at most `timeout_s`
seconds; on EOF, a stall or an unparsable reply it kills the JVM and raises
`MeteorError`. Nothing here has a `__del__`.

Protocol (`java -jar meteor-1.5.jar - - -stdio -l en -norm`): for each pair
send `SCORE ||| ref ||| hyp` and read one line of sufficient statistics; then
send `EVAL ||| stats_1 ||| ... ||| stats_n` and read n per-pair scores and the
corpus score, one per line.
"""

import os
import select
import subprocess
import time
from typing import Sequence

JAR = "meteor-1.5.jar"
# How long one reply may take. The first one includes JVM start-up and loading
# the paraphrase table: 5-8 s on an idle laptop, 30 s measured on 2 busy cores.
DEFAULT_TIMEOUT_S = 300.0


class MeteorError(RuntimeError):
  """The METEOR JVM died, stalled past the time limit or answered garbage."""


def jar_dir() -> str:
  """The pycocoevalcap folder that holds meteor-1.5.jar and its data/."""
  from pycocoevalcap.meteor import meteor  # pylint: disable=g-import-not-at-top
  return os.path.dirname(os.path.abspath(meteor.__file__))


class MeteorProcess:
  """One METEOR JVM; `score` may be called many times, `close` always returns promptly."""

  def __init__(self, java: str, timeout_s: float = DEFAULT_TIMEOUT_S):
    self.java, self.timeout_s = java, timeout_s
    # stderr is discarded: a pipe nobody reads would fill and block the JVM.
    command = [java, "-jar", "-Xmx2G", JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
    self._proc = subprocess.Popen(command, cwd=jar_dir(), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    self._buffer = b""

  def score(self, hypotheses: Sequence[str],
            references: Sequence[str]) -> tuple[float, list[float]]:
    """Corpus METEOR and `[num_pairs]` per-pair scores; one reference per hypothesis.

    Raises:
      MeteorError: the JVM died, stalled or answered garbage; it is killed first.
    """
    try:
      stats = []
      for hyp, ref in zip(hypotheses, references):
        hyp = hyp.replace("|||", "").replace("  ", " ")  # as pycocoevalcap sanitises it
        self._send(f"SCORE ||| {ref} ||| {hyp}")
        stats.append(self._receive())
      self._send(" ||| ".join(["EVAL"] + stats))
      per_pair = [self._number() for _ in stats]
      return self._number(), per_pair
    except MeteorError:
      self.close()
      raise

  def close(self) -> None:
    """Kills the JVM (if still running) and reaps it."""
    if self._proc.poll() is None:
      self._proc.kill()
    for pipe in (self._proc.stdin, self._proc.stdout):
      try:
        pipe.close()
      except OSError:  # a broken stdin pipe may fail to flush
        pass
    self._proc.wait()

  def _wait(self, fd: int, write: bool, deadline: float, doing: str) -> None:
    left = deadline - time.monotonic()
    ready = select.select([], [fd], [], max(left, 0))[1] if write else select.select(
        [fd], [], [], max(left, 0))[0]
    if not ready:
      raise MeteorError(f"no progress for {self.timeout_s:g} s while {doing}")

  def _send(self, line: str) -> None:
    data = (line + "\n").encode()
    fd, deadline = self._proc.stdin.fileno(), time.monotonic() + self.timeout_s
    while data:
      self._wait(fd, True, deadline, "sending to the JVM")
      try:
        written = os.write(fd, data[:select.PIPE_BUF])
      except BrokenPipeError:
        raise MeteorError(f"the JVM exited (code {self._proc.wait()})") from None
      data = data[written:]

  def _receive(self) -> str:
    fd, deadline = self._proc.stdout.fileno(), time.monotonic() + self.timeout_s
    while b"\n" not in self._buffer:
      self._wait(fd, False, deadline, "waiting for a reply")
      chunk = os.read(fd, 65536)
      if not chunk:
        raise MeteorError(f"the JVM exited (code {self._proc.wait()})")
      self._buffer += chunk
    line, self._buffer = self._buffer.split(b"\n", 1)
    return line.decode(errors="replace").strip()

  def _number(self) -> float:
    reply = self._receive()
    try:
      return float(reply)
    except ValueError:
      raise MeteorError(f"unexpected reply {reply[:60]!r}") from None
