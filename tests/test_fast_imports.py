"""docs/ARCHITECTURE.md's import rules, checked over the source (every import, function-local ones included)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The packages, lowest first; each may import itself and what ALLOWED names (docs/ARCHITECTURE.md, "Import rules").
ALLOWED = {
    "core": set(),
    "storage": {"core"},
    "models": {"core", "storage"},
    "spec": {"core", "storage", "models"},
    "analysis": {"core", "storage", "spec"},
    "engine": {"core", "storage", "models", "spec", "analysis"},
    "queue": {"core", "storage", "models", "spec", "analysis"},
    "views": {"core", "storage", "models", "spec", "analysis", "queue"},
    "doctor": {"core", "storage", "models", "spec", "analysis", "queue", "views"},
    "demo": {"core", "storage", "models", "spec", "engine"},
    "cli": {"core", "storage", "models", "spec", "analysis", "engine", "queue", "views", "doctor", "demo"},
}
# The one door from the queue into the engine: the training child, in its own process.
EXCEPTIONS = {("farensed.queue.child", "engine")}
# Where mlx / mlx_lm may be imported, and only inside functions (importing a module stays cheap).
MLX_PACKAGES = {"engine", "demo"}


def _sources() -> dict[str, Path]:
    """Module name -> file, for the library and the CLI (`cli/` installs as `farensed.cli`)."""
    out = {}
    for base, prefix in ((ROOT / "farensed", "farensed"), (ROOT / "cli", "farensed.cli")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([prefix, *parts])] = path
    return out


SOURCES = _sources()


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ALLOWED:
        return parts[1]
    return "core"  # farensed, farensed.errors, farensed.i18n, farensed.__main__


@functools.cache
def _imports(path: Path) -> tuple[tuple[str, int, bool], ...]:
    """(imported module, line, at module level) for every farensed/mlx import in a file (parsed once per run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        found += [(name, node.lineno, id(node) in top) for name in names if name.split(".")[0] in _WATCHED]
    return tuple(found)


_WATCHED = ("farensed", "mlx", "mlx_lm")


def graph() -> dict[str, set[str]]:
    """Module -> the farensed modules it imports (a `from pkg import module` counts as importing the module)."""
    edges: dict[str, set[str]] = {}
    for module, path in SOURCES.items():
        targets = set()
        for name, _line, _top in _imports(path):
            if name in SOURCES:
                targets.add(name)
        edges[module] = targets - {module}
    return edges


def test_every_import_follows_the_package_rules():
    broken = []
    for module, path in SOURCES.items():
        here = package_of(module)
        for name, line, at_top in _imports(path):
            if name.split(".")[0] in ("mlx", "mlx_lm"):
                if here not in MLX_PACKAGES or at_top:
                    broken.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
                continue
            if name not in SOURCES:
                continue
            there = package_of(name)
            if there != here and there not in ALLOWED[here] and (module, there) not in EXCEPTIONS:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {here} may not import {name} ({there})")
    assert not broken, "\n".join(broken)


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the modules, if any (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            # importing a package's module runs the package's __init__ first: parents are not cycles
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_cycle_not_even_inside_a_function():
    cycle = _cycle(graph())
    assert cycle is None, " → ".join(cycle)


@pytest.mark.parametrize("module", ["farensed.queue.daemon", "farensed.queue.main", "farensed.cli.main"])
def test_the_daemon_and_the_cli_reach_no_mlx_at_import(module):
    """Following module-level imports from the daemon or the CLI never reaches mlx (function-local ones run later)."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen or current not in SOURCES:
            continue
        seen.add(current)
        for name, line, at_top in _imports(SOURCES[current]):
            assert not (at_top and name.split(".")[0] in ("mlx", "mlx_lm")), f"{current}:{line} imports {name}"
            if at_top:
                todo.append(name)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a.x": {"a"}, "a": {"a.x"}}) is None
