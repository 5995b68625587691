"""The command line every program shares: flag parsing, `--config`, and one error tail.

A program declares its flags in a function and runs through `run`:

  def define_flags() -> None:
    cli.define_config_flag()
    flags.DEFINE_integer("steps", 10, "...")

  def main(argv):
    cli.expect_no_arguments(argv)
    ...

  if __name__ == "__main__":
    cli.run(main, define_flags)

`run` parses with `parse_flags` (a missing config file, an unknown config key
or a bad flag value is one `error: ...` line, exit 2; `--help` prints the
program's docstring and flags, exit 0) and runs `main` inside `error_tail`.
The tail turns only the project's own user errors (`errors.UserError` and its
subclasses) and a full disk into one line with exit 2 (nothing else is printed
about a full disk), and a SIGINT/SIGTERM
into its line with exit 130/143; anything else is a bug and keeps its
traceback.

`run` also turns on JAX's persistent compilation cache (`use_compilation_cache`),
so a rerun, or a new run of the same shapes, skips the compiles of the last one.
"""

import contextlib
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

from micar_jax import errors

EXIT_USER_ERROR = 2
# A folder for compiled programs, or "off" (see `compilation_cache_dir`).
COMPILATION_CACHE_ENV = "MICAR_JAX_COMPILATION_CACHE"
_OFF = ("off", "0", "false", "no", "none")
_HELP = ("--help", "-help", "-h", "-?", "--helpshort")


def define_config_flag(required: bool = True, default: str | None = None,
                       help_text: str = "Config file (configs/<dataset>.py).",
                       lock_config: bool = True) -> None:
  """Defines `--config` (a config file plus `--config.KEY=VALUE` overrides)."""
  # A locked config refuses unknown override keys instead of adding them.
  config_flags.DEFINE_config_file("config", default, help_text, lock_config=lock_config)
  if required:
    flags.mark_flags_as_required(["config"])


def define_int_list(name: str, default: Sequence[int], help_text: str) -> None:
  """Defines a comma-separated list flag whose items must be whole numbers (checked at parse)."""
  flags.DEFINE_list(name, [str(v) for v in default], help_text)
  flags.register_validator(name, lambda values: all(v.strip().isdigit() for v in values),
                           f"--{name} must be comma-separated whole numbers")


def config_path() -> str:
  """The `--config` file as given (without its `:variant`), for printed commands."""
  return config_flags.get_config_filename(flags.FLAGS["config"])


def expect_no_arguments(argv: Sequence[str]) -> None:
  """Raises UserError when the command line has arguments besides the flags."""
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments: {' '.join(argv[1:])}")


def one_line(error: BaseException) -> str:
  """The error's text on one line, without the quoting of reprs (config errors carry them)."""
  text = str(error).replace("\\n", " ").replace("\n", " ").replace("\\'", "").replace("'", "")
  return " ".join(text.strip("\" ").split())


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` (one line) on stderr and exits 2."""
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def _flags_module(program: str) -> str:
  # absl files the flags that the `__main__` module defines under the script's path.
  return sys.argv[0] if program == "__main__" else program


def print_help(program: str) -> NoReturn:
  """Prints the program module's docstring and its flags on stdout; exits 0."""
  module = sys.modules.get(program)
  doc = (getattr(module, "__doc__", None) or "").strip()
  if doc:
    print(doc, end="\n\n")
  text = flags.FLAGS.module_help(_flags_module(program)).strip()
  if text:
    print(f"flags:\n\n{text}")
  print("\nTry --helpfull to get a list of all flags.")
  sys.exit(0)


def _config_file_given(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg[len("--config="):].split(":", 1)[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def parse_flags(argv: list[str], program: str | None = None) -> list[str]:
  """absl parsing; config and flag problems are one line with exit 2.

  Args:
    argv: the command line, program name first.
    program: the module whose docstring and flags `--help` prints (default
      `__main__`).

  Returns:
    argv less the parsed flags.
  """
  args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  if any(arg in _HELP for arg in args):
    print_help(program or "__main__")
  path = _config_file_given(args)
  if path is not None and not os.path.isfile(path):
    fail(f"config file {path} does not exist")
  try:
    return flags.FLAGS(argv)
  except AttributeError as e:
    # A locked config refusing an override: the key is unknown.
    fail(f"unknown config key: {one_line(e)}")
  except (flags.Error, OSError, KeyError, ValueError, TypeError) as e:
    fail(one_line(e))


def _disk_full_message(error: BaseException) -> str:
  where = getattr(error, "filename", None) or "a run file"
  return (f"No space left on device writing {where}; free some space and rerun the same "
          "command to resume from the latest checkpoint")


class _SaveLeftovers(logging.Filter):
  """Keeps the leftovers of a checkpoint save that ran out of disk space off the console.

  An Orbax save that fails closes its event loop while TensorStore still
  finishes the save's other writes: each of them reports RuntimeError("Event
  loop is closed") through sys.unraisablehook (hundreds for a large state,
  before the save's own error reaches the tail), and asyncio logs each failed
  write task ("Task exception was never retrieved") when it is collected,
  after the tail's line. The write tasks' disk-full errors are dropped; the
  loop-closed reports are held until the tail knows how the run ended: a full
  disk drops them (its one line says it all), any other ending prints them.
  """

  def __init__(self):
    super().__init__()
    self.held: list[str] = []
    self.disk_full: bool | None = None  # None until the tail settles it
    self._default_hook = None

  def install(self) -> None:
    if self._default_hook is None:
      self._default_hook = sys.unraisablehook
      sys.unraisablehook = self._unraisable
      logging.getLogger("asyncio").addFilter(self)

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.exc_info and errors.is_disk_full(record.exc_info[1]))

  def _unraisable(self, args) -> None:
    closed_loop = (isinstance(args.exc_value, RuntimeError)
                   and str(args.exc_value) == "Event loop is closed")
    if not closed_loop or self.disk_full is False:
      self._default_hook(args)
    elif self.disk_full is None:
      # Formatted now: the hook's arguments must not outlive it.
      header = (f"{args.err_msg or 'Exception ignored in'}: {args.object!r}\n"
                if args.object is not None else "")
      self.held.append(header + "".join(traceback.format_exception(
          args.exc_type, args.exc_value, args.exc_traceback)))

  def settle(self, disk_full: bool) -> None:
    """Records how the run ended; prints what was held unless the disk was full."""
    if self.disk_full is not None:
      return
    self.disk_full = disk_full
    held, self.held = self.held, []
    if held and not disk_full:
      sys.stderr.write("".join(held))
      sys.stderr.flush()


_SAVE_LEFTOVERS = _SaveLeftovers()


@contextlib.contextmanager
def error_tail() -> Iterator[None]:
  """User errors and a full disk: one line, exit 2; signals: their line and code; bugs: raised."""
  try:
    try:
      yield
    except BaseException as e:
      _SAVE_LEFTOVERS.settle(errors.is_disk_full(e))
      raise
    _SAVE_LEFTOVERS.settle(False)
  except errors.UserError as e:
    fail(str(e))
  except errors.Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    if not errors.is_disk_full(e):
      raise
    fail(_disk_full_message(e))


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
  """Where compiled programs are kept between runs; None when the cache is off.

  In order: MICAR_JAX_COMPILATION_CACHE (a folder, or "off"); JAX's own
  JAX_COMPILATION_CACHE_DIR when the user set it; else
  $XDG_CACHE_HOME/micar_jax/jax_cache (~/.cache/micar_jax/jax_cache).
  """
  chosen = environ.get(COMPILATION_CACHE_ENV, "").strip()
  if chosen.lower() in _OFF:
    return None
  if chosen:
    return os.path.abspath(os.path.expanduser(chosen))
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return environ["JAX_COMPILATION_CACHE_DIR"]
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "micar_jax", "jax_cache")


def use_compilation_cache() -> str | None:
  """Turns JAX's persistent compilation cache on at `compilation_cache_dir()` (or off).

  The first step of a run otherwise waits minutes for compiles that the
  previous run of the same shapes already did. Set through the environment
  (JAX reads it when imported) and through jax.config when JAX is loaded
  already. JAX keeps what took at least JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS
  (default 1 s) to compile.

  Returns:
    The cache folder, or None when it is off or cannot be created (one
    `warning:` line on stderr says so; the run goes on without it).
  """
  directory = compilation_cache_dir()
  if directory is not None:
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as e:
      print(f"warning: no compilation cache: cannot create {directory} ({e.strerror}); set "
            f"{COMPILATION_CACHE_ENV}=DIR to place it elsewhere", file=sys.stderr)
      directory = None
  settings = ({"JAX_ENABLE_COMPILATION_CACHE": "false"} if directory is None else
              {"JAX_ENABLE_COMPILATION_CACHE": "true", "JAX_COMPILATION_CACHE_DIR": directory})
  os.environ.update(settings)
  if "jax" in sys.modules:
    jax = sys.modules["jax"]
    jax.config.update("jax_enable_compilation_cache", directory is not None)
    if directory is not None:
      jax.config.update("jax_compilation_cache_dir", directory)
  return directory


def run(main: Callable[[list[str]], Any],
        define_flags: Callable[[], None] | None = None) -> NoReturn:
  """Defines the flags, parses them (`parse_flags`) and runs `main(argv)` in `error_tail`.

  `main` may return an exit status (None is 0). The compilation cache is on
  (`use_compilation_cache`) before `main` runs, and a checkpoint save that
  fills the disk ends with the tail's one line only (`_SaveLeftovers`).
  """
  program = main.__module__
  if define_flags is not None:
    define_flags()
  # Flags defined through this module (--config) belong to the program in --help.
  for flag in flags.FLAGS.get_flags_for_module(__name__):
    flags.FLAGS.register_flag_by_module(_flags_module(program), flag)

  _SAVE_LEFTOVERS.install()

  def main_in_tail(argv: list[str]) -> Any:
    with error_tail():
      use_compilation_cache()
      return main(argv)

  app.run(main_in_tail, flags_parser=functools.partial(parse_flags, program=program))
  sys.exit(0)  # app.run always exits; this line keeps the NoReturn promise visible.
