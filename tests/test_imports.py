"""The import graph of python/specdyn has no cycle, read from the source by an AST walk and checked by
importing every module in a fresh interpreter, dependencies first."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import specdyn

# the package under test: the installed one in CI, python/specdyn with the in-tree build
PACKAGE = Path(specdyn.__file__).resolve().parent
# the one import back into specdyn.studies: the deprecated plots.study_figures, inside that function only
DEPRECATED_EDGES = {("specdyn.plots", "specdyn.studies")}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its source (module level or in a function)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        # a module importing its own package (``from .. import _core``) is not a cycle: the package's
        # __init__ runs first either way
        found |= {t for t in targets if t in known and t != name and not name.startswith(t + ".")}
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, mods) - {t for (a, t) in DEPRECATED_EDGES if a == m} for m, p in mods.items()}


def _dependency_order(graph) -> list[str]:
    """Modules with every import before the importer; AssertionError naming a cycle if there is one."""
    order, state = [], {}

    def visit(m, stack):
        if state.get(m) == "done":
            return
        if state.get(m) == "open":
            cycle = stack[stack.index(m):] + [m]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        state[m] = "open"
        for t in sorted(graph[m]):
            visit(t, stack + [m])
        state[m] = "done"
        order.append(m)

    for m in sorted(graph):
        visit(m, [])
    return order


def test_the_walk_finds_a_cycle_when_there_is_one():
    with pytest.raises(AssertionError, match="a -> b -> a"):
        _dependency_order({"a": {"b"}, "b": {"a"}})
    assert _dependency_order({"a": {"b"}, "b": set()}) == ["b", "a"]


def test_studies_and_sweeps_import_each_other_no_more():
    graph = _graph()
    assert "specdyn.sweeps" in graph["specdyn.studies.width_consistency"]
    assert not any(t.startswith("specdyn.studies") for t in graph["specdyn.sweeps"])


def test_no_import_cycle_in_the_package():
    _dependency_order(_graph())


def test_every_module_imports_alone_in_dependency_order():
    import importlib.util

    skip = ("specdyn.__main__",) + (() if importlib.util.find_spec("torch") else ("specdyn.torch",))
    order = [m for m in _dependency_order(_graph()) if not m.startswith(skip)]
    code = "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % order
    env_path = str(PACKAGE.parent)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": env_path}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
