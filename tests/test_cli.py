"""Tests for micar_jax.cli: every documented program's --help, and the one error tail."""

import concurrent.futures
import errno
import glob
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from micar_jax import cli, errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `python -m micar_jax.<module>` as the docs and launch scripts write it.
_PROGRAM = re.compile(r"python3? -m (micar_jax(?:\.[A-Za-z_]\w*)*)")


def documented_programs() -> list[str]:
  """Every `python -m micar_jax...` module that README.md, docs/*.md or launch/*.sh name."""
  files = [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md")),
           *glob.glob(os.path.join(ROOT, "launch", "*.sh"))]
  found = set()
  for path in files:
    with open(path, encoding="utf-8") as f:
      found.update(_PROGRAM.findall(f.read()))
  return sorted(found)


def _env() -> dict[str, str]:
  return dict(os.environ, JAX_PLATFORMS="cpu")


def _help(module: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                        text=True, timeout=300, cwd=ROOT, env=_env())


def test_every_documented_program_answers_help():
  programs = documented_programs()
  # The regex must keep finding the main programs, or this test would cover nothing.
  assert {"micar_jax.main", "micar_jax.plan", "micar_jax.bench"} <= set(programs), programs
  # Each --help is a fresh interpreter; running them side by side keeps the test short.
  with concurrent.futures.ThreadPoolExecutor(max_workers=len(programs)) as pool:
    results = dict(zip(programs, pool.map(_help, programs)))
  failed = {m: (r.returncode, r.stderr[-500:]) for m, r in results.items()
            if r.returncode != 0 or not r.stdout.strip()}
  assert not failed, failed
  for module, result in results.items():
    assert "Traceback" not in result.stderr, (module, result.stderr)


# A program made of nothing but cli: main raises what the first argument names.
_PROGRAM_SCRIPT = """
import errno, signal, sys
from micar_jax import cli, errors
from micar_jax.training import stopping

RAISE = {
    "user": lambda: errors.UserError("bad input\\nsecond line"),
    "config": lambda: errors.ConfigError("config x=1 is invalid"),
    "value": lambda: ValueError("a genuine bug"),
    "type": lambda: TypeError("another bug"),
    "disk": lambda: OSError(errno.ENOSPC, "No space left on device", "/run/ckpt"),
    "term": lambda: errors.Interrupted(signal.SIGTERM),
    "keyboard": lambda: KeyboardInterrupt(),
}

def main(argv):
  if len(argv) > 1:
    raise RAISE[argv[1]]()
  print("ran")

cli.run(main, cli.define_config_flag)
"""


def run_program(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _PROGRAM_SCRIPT, "--config=configs/synthetic.py",
                         *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                        env=_env())


def _one_error_line(out: subprocess.CompletedProcess, *fragments: str) -> str:
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


def test_user_errors_are_one_line_and_bugs_keep_their_traceback():
  assert run_program().stdout.strip() == "ran"
  assert _one_error_line(run_program("user")) == "error: bad input second line"
  _one_error_line(run_program("config"), "config x=1 is invalid")
  _one_error_line(run_program("disk"), "No space left on device writing /run/ckpt")
  for kind, name in (("value", "ValueError: a genuine bug"), ("type", "TypeError: another bug")):
    out = run_program(kind)
    assert out.returncode == 1, out.stderr
    assert "Traceback (most recent call last)" in out.stderr and name in out.stderr
  term = run_program("term")
  assert term.returncode == 128 + signal.SIGTERM
  assert term.stderr.strip() == "interrupted by SIGTERM"
  keyboard = run_program("keyboard")
  assert keyboard.returncode == 130 and keyboard.stderr.strip() == "interrupted"


def test_config_and_flag_problems_are_one_line():
  _one_error_line(run_program("--config.model.num_expertz=4"), "unknown config key",
                  "num_expertz")
  out = subprocess.run([sys.executable, "-c", _PROGRAM_SCRIPT, "--config=configs/nope.py"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env())
  _one_error_line(out, "config file configs/nope.py does not exist")
  _one_error_line(run_program("--config.train.epochs=many"), "epochs")
  _one_error_line(run_program("--no_such_flag=1"), "no_such_flag")


def test_a_bug_in_a_mode_of_main_keeps_its_traceback():
  script = ("from micar_jax import cli, main\n"
            "def broken(*args, **kwargs):\n"
            "  raise TypeError('a bug in a mode')\n"
            "main.run = broken\n"
            "cli.run(main.main, main.define_flags)\n")
  out = subprocess.run([sys.executable, "-c", script, "--config=configs/synthetic.py",
                        "--mode=summary"], capture_output=True, text=True, timeout=300,
                       cwd=ROOT, env=_env())
  assert out.returncode == 1, out.stderr
  assert "Traceback (most recent call last)" in out.stderr
  assert "TypeError: a bug in a mode" in out.stderr


def test_error_tail_in_process(capsys):
  with pytest.raises(SystemExit) as caught, cli.error_tail():
    raise errors.ConfigError("config mesh.data=3 does not divide 8 devices")
  assert caught.value.code == 2
  assert capsys.readouterr().err == "error: config mesh.data=3 does not divide 8 devices\n"
  with pytest.raises(SystemExit) as caught, cli.error_tail():
    raise errors.Interrupted(signal.SIGINT)
  assert caught.value.code == 130
  # tensorstore reports a full disk inside a ValueError.
  with pytest.raises(SystemExit) as caught, cli.error_tail():
    raise ValueError("RESOURCE_EXHAUSTED: No space left on device")
  assert caught.value.code == 2
  assert "writing a run file" in capsys.readouterr().err
  with pytest.raises(ValueError, match="a bug"), cli.error_tail():
    raise ValueError("a bug")
  with pytest.raises(OSError), cli.error_tail():
    raise OSError(errno.EACCES, "Permission denied")


def test_arguments_besides_flags_are_a_user_error():
  cli.expect_no_arguments(["prog"])
  with pytest.raises(errors.UserError, match="unexpected arguments: a b"):
    cli.expect_no_arguments(["prog", "a", "b"])


def test_ci_runs_exactly_the_readmes_test_command_with_the_linter_first():
  root = pathlib.Path(__file__).parent.parent
  ci = (root / ".ci" / "run").read_text().strip().splitlines()[-1]
  assert ci in (root / "README.md").read_text()
  assert ci.index("ruff check .") < ci.index("python -m pytest tests")


# A program that compiles one function through cli.run; the cache keeps any compile (min 0 s).
_COMPILING_SCRIPT = """
import jax, jax.numpy as jnp
from micar_jax import cli

def main(argv):
  print(jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.arange(3.0)))

cli.run(main)
"""


def _compile_once(tmp_path, **env):
  base = {k: v for k, v in _env().items()
          if k not in ("JAX_COMPILATION_CACHE_DIR", cli.COMPILATION_CACHE_ENV)}
  out = subprocess.run([sys.executable, "-c", _COMPILING_SCRIPT], capture_output=True, text=True,
                       timeout=300, cwd=ROOT,
                       env=dict(base, XDG_CACHE_HOME=str(tmp_path / "xdg"),
                                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env))
  assert out.returncode == 0, out.stderr
  return out


def _entries(folder):
  return os.listdir(folder) if os.path.isdir(folder) else []


def test_programs_keep_compiled_programs_in_the_user_cache_folder_unless_told_otherwise(
    tmp_path):
  _compile_once(tmp_path)
  assert _entries(tmp_path / "xdg" / "micar_jax" / "jax_cache")
  _compile_once(tmp_path, MICAR_JAX_COMPILATION_CACHE=str(tmp_path / "mine"))
  assert _entries(tmp_path / "mine")
  # An explicit JAX_COMPILATION_CACHE_DIR (as the tests set it) is respected.
  _compile_once(tmp_path, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_own"))
  assert _entries(tmp_path / "jax_own")
  off = tmp_path / "off"
  _compile_once(off, MICAR_JAX_COMPILATION_CACHE="off",
                JAX_COMPILATION_CACHE_DIR=str(off / "jax_own"))
  assert not _entries(off / "jax_own") and not _entries(off / "xdg" / "micar_jax" / "jax_cache")


def test_compilation_cache_dir_precedence():
  home = os.path.expanduser("~")
  assert cli.compilation_cache_dir({}) == os.path.join(home, ".cache", "micar_jax", "jax_cache")
  assert cli.compilation_cache_dir({"XDG_CACHE_HOME": "/c"}) == "/c/micar_jax/jax_cache"
  assert cli.compilation_cache_dir({"JAX_COMPILATION_CACHE_DIR": "/j", "XDG_CACHE_HOME": "/c"}) == "/j"
  assert cli.compilation_cache_dir({cli.COMPILATION_CACHE_ENV: "/m",
                                    "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/m"
  assert cli.compilation_cache_dir({cli.COMPILATION_CACHE_ENV: "OFF",
                                    "JAX_COMPILATION_CACHE_DIR": "/j"}) is None
