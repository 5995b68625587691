"""stack_limit: the program restarts once, with the same command line and the hard limit."""

import resource
import subprocess
import sys
import textwrap

import pytest

_SOFT = 8 << 20
_PROBE = textwrap.dedent("""
    import os, resource, sys
    from micar_jax.performance import stack_limit
    print("start", os.getpid(), sys.argv[1:], flush=True)
    stack_limit.restart_unlimited()
    print("limit", resource.getrlimit(resource.RLIMIT_STACK)[0], sys.argv[1:])
""")


def _run(soft: int):
  def lower():
    resource.setrlimit(resource.RLIMIT_STACK, (soft, resource.getrlimit(resource.RLIMIT_STACK)[1]))
  return subprocess.run([sys.executable, "-c", _PROBE, "a", "--b=1"], capture_output=True,
                        text=True, timeout=60, check=True, preexec_fn=lower).stdout.splitlines()


_HARD = resource.getrlimit(resource.RLIMIT_STACK)[1]


@pytest.mark.skipif(_HARD != resource.RLIM_INFINITY and _HARD <= _SOFT,
                    reason="the hard stack limit leaves nothing to raise")
def test_a_low_limit_restarts_once_with_the_same_arguments_and_the_hard_limit():
  hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
  lines = _run(_SOFT)
  starts = [l for l in lines if l.startswith("start")]
  assert len(starts) == 2  # the first run and its one restart
  assert lines[-1] == f"limit {hard} ['a', '--b=1']"


def test_no_restart_when_the_limit_is_already_the_hard_one():
  hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
  lines = _run(hard)
  assert sum(l.startswith("start") for l in lines) == 1
  assert lines[-1] == f"limit {hard} ['a', '--b=1']"
