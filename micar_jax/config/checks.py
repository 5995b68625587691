"""What one config value accepts: a type plus a range or choices, in words for errors and docs.

`settings.SETTINGS` gives each key one `Check`, built by the small constructors
below. Choices that the code keeps in a table (the MoE dispatches, decoders,
activations, metric suites) are a `Registry`: the table is imported when a
value is first checked, not when a config file loads, since most of those
modules pull in jax.
"""

import dataclasses
import importlib
import math
import os
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Registry:
  """The names in a table of the code, `module.attr` (a dict's keys or a tuple)."""
  module: str
  attr: str

  def names(self) -> tuple[Any, ...]:
    return tuple(getattr(importlib.import_module(self.module), self.attr))

  def __str__(self) -> str:
    return f"{self.module.removeprefix('micar_jax.')}.{self.attr}"


Choices = tuple[Any, ...] | Registry


def _names(choices: Choices) -> tuple[Any, ...]:
  return choices.names() if isinstance(choices, Registry) else choices


@dataclasses.dataclass(frozen=True)
class Check:
  """The accepted type(s) and value test of one key.

  Attributes:
    kind: the accepted Python type(s); an int is accepted where float is.
    ok: the value test, run after the type test.
    words: what `ok` accepts, in words (a function, so registry choices are read late).
    source: the registry the choices come from, if any (shown in docs/configuration.md).
  """
  kind: type | tuple[type, ...]
  ok: Callable[[Any], bool]
  words: Callable[[], str]
  source: Registry | None = None

  def accepts(self, value: Any) -> bool:
    """Type and value test; a bool is never taken for an int."""
    kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
    if isinstance(value, bool):
      return bool in kinds and self.ok(value)
    return isinstance(value, kinds) and self.ok(value)

  def expect(self) -> str:
    return self.words()


def number(kind: type, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> Check:
  """A finite int or float in [lo, hi] (either end open or absent)."""
  def ok(v: Any) -> bool:
    return (math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi)))
  name = "an integer" if kind is int else "a finite number"
  show = str if kind is int else "{:g}".format
  if lo is not None and hi is not None:
    bounds = f"in {'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}"
  elif lo is not None:
    bounds = f"{'>' if lo_open else '>='} {show(lo)}"
  else:
    bounds = ""
  words = f"{name} {bounds}".strip()
  return Check((int, float) if kind is float else int, ok, lambda: words)


def choice(choices: Choices, kind: type = str) -> Check:
  """One of `choices` (a tuple, or a registry read when first checked)."""
  return Check(kind, lambda v: v in _names(choices), lambda: f"one of {_names(choices)}",
               choices if isinstance(choices, Registry) else None)


def some_of(choices: Choices) -> Check:
  """A non-empty tuple or list of names from `choices`."""
  return Check((tuple, list), lambda v: bool(v) and set(v) <= set(_names(choices)),
               lambda: f"some of {_names(choices)}",
               choices if isinstance(choices, Registry) else None)


def flag() -> Check:
  return Check(bool, lambda v: True, lambda: "True or False")


def text() -> Check:
  return Check(str, lambda v: True, lambda: "a string")


def path() -> Check:
  """A file or folder that must exist when set ("" = unset)."""
  return Check(str, lambda v: not v or os.path.exists(os.path.expanduser(v)),
               lambda: 'an existing path (or "" for none)')


def mesh_axis() -> Check:
  return Check(int, lambda v: v == -1 or v >= 1,
               lambda: "-1 (fill the devices) or an integer >= 1")


def int_tuple(length: int | None, words: str) -> Check:
  """A tuple or list of integers >= 1 (of `length` items when given)."""
  return Check((tuple, list), lambda v: (length is None or len(v) == length) and all(
      isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v), lambda: words)


def index_or_mean() -> Check:
  return Check((str, int), lambda v: v == "mean" or (isinstance(v, int) and v >= 0),
               lambda: '"mean" or an index >= 0')
