"""docs/configuration.md's generated tables: every setting, and the switches.

  python -m micar_jax.config.settings_doc           # prints the tables
  python -m micar_jax.config.settings_doc --write   # regenerates them in docs/configuration.md

Each table sits between its two markers in the page; tests/test_settings.py
fails when the page and `render` differ.
"""

import json
import sys
from typing import Any

from micar_jax.config import settings

# The page the tables live in, relative to the repository root.
DOC = "docs/configuration.md"


def show(value: Any) -> str:
  """A value as a config file writes it: strings in double quotes, tuples in parentheses."""
  if isinstance(value, str):
    return json.dumps(value, ensure_ascii=False)
  if isinstance(value, tuple):
    return "(" + ", ".join(show(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value)


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def markdown_table() -> str:
  """Every setting: key, default, accepted values (and the registry they come from), doc."""
  rows = ["| key | default | accepted | doc |", "|---|---|---|---|"]
  for s in settings.SETTINGS:
    accepted = s.check.expect() + (f" (`{s.check.source}`)" if s.check.source else "")
    rows.append(f"| `{s.key}` | `{_cell(show(s.default))}` | {_cell(accepted)} | {_cell(s.doc)} |")
  return "\n".join(rows) + "\n"


def switch_table() -> str:
  """The deviations from the reference: key, the dataset configs' value, the alternatives."""
  rows = ["| config key | reference | alternatives |", "|---|---|---|"]
  for s in settings.SETTINGS:
    if s.switch is not None:
      note = f" {s.switch.note}" if s.switch.note else ""
      rows.append(f"| `{s.key}` | `{show(s.reference)}`{note} | {s.switch.alternatives} |")
  return "\n".join(rows) + "\n"


# docs/configuration.md holds each table between its begin and end markers.
TABLES = {"switches": switch_table, "settings": markdown_table}


def _markers(name: str) -> tuple[str, str]:
  return (f"<!-- generated: python -m micar_jax.config.settings_doc --write; {name} -->\n",
          f"<!-- end {name} -->\n")


def render(doc: str) -> str:
  """`doc` with each generated table replaced by its current text."""
  for name, table in TABLES.items():
    begin, end = _markers(name)
    head, found, rest = doc.partition(begin)
    if not found or end not in rest:
      raise ValueError(f"no {begin.strip()} ... {end.strip()} block")
    doc = head + begin + table() + end + rest.partition(end)[2]
  return doc


def main(argv: list[str]) -> None:
  """No argument: prints the tables; `--write [PATH]`: regenerates them in PATH."""
  if argv[1:2] == ["--write"]:
    path = argv[2] if len(argv) > 2 else DOC
    with open(path, encoding="utf-8") as f:
      doc = f.read()
    with open(path, "w", encoding="utf-8") as f:
      f.write(render(doc))
    return
  for table in TABLES.values():
    print(table())


if __name__ == "__main__":
  main(sys.argv)
