"""The package's layering: imports point down only, and no modules import each other in a loop.

Layers, bottom up (README, "What an image goes through"):
  0 foundation  errors.py, cli.py
  1 libraries   models/, data/, metrics/, decode.py, evaluate.py
  2 core        core/, config/
  3 modes       training/, inference/, serve/, performance/, convert/
  4 tools       tools/
  5 entries     main.py, plan.py, bench.py
Within a layer a module may use another (performance compiles training's step;
serve shows inference's explanations); a lower layer never imports a higher one.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).parent.parent / "micar_jax"
LAYERS = {
    "errors": 0, "cli": 0,
    "models": 1, "data": 1, "metrics": 1, "decode": 1, "evaluate": 1,
    "core": 2, "config": 2,
    "training": 3, "inference": 3, "serve": 3, "performance": 3, "convert": 3,
    "tools": 4,
    "main": 5, "plan": 5, "bench": 5,
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
  """micar_jax module -> the micar_jax modules it imports (function-level imports too)."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  out = {}
  for name, path in modules.items():
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("micar_jax"):
        for alias in node.names:
          child = f"{node.module}.{alias.name}"
          found.add(child if child in modules else node.module)
      elif isinstance(node, ast.Import):
        found |= {a.name for a in node.names if a.name.startswith("micar_jax")}
    out[name] = found - {name}
  return out


def _layer(module: str) -> int | None:
  parts = module.split(".")
  return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_has_a_layer():
  unplaced = sorted(m for m in _imports() if m != "micar_jax" and _layer(m) is None)
  assert not unplaced, f"place these in LAYERS (and the README's picture): {unplaced}"


def test_no_module_imports_a_higher_layer():
  upward = sorted(f"{src} -> {dst}" for src, dsts in _imports().items() for dst in dsts
                  if _layer(src) is not None and _layer(dst) is not None
                  and _layer(dst) > _layer(src))
  assert not upward, upward


def test_no_import_cycles():
  graph = _imports()
  state: dict[str, int] = {}  # 1 = on the current path, 2 = done

  def visit(node: str, path: list[str]) -> list[str] | None:
    state[node] = 1
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
      if nxt not in state:
        cycle = visit(nxt, path + [nxt])
        if cycle:
          return cycle
    state[node] = 2
    return None

  for start in sorted(graph):
    if start not in state:
      cycle = visit(start, [start])
      assert cycle is None, " -> ".join(cycle)


def test_models_use_no_config_defaults_and_no_core():
  for src, dsts in _imports().items():
    if src.startswith("micar_jax.models"):
      assert not [d for d in dsts if d.startswith(("micar_jax.config", "micar_jax.core"))], src
