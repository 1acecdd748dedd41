"""House rules of the package layout (see docs/architecture.md), checked on the source itself.

- no import cycle between the modules of ``synapse_nb`` (imports under ``TYPE_CHECKING`` are
  annotations only and do not count);
- the algorithm packages never import ``pipeline`` or ``ui``; nothing but ``ui`` imports ``ui``;
- validating parameters (``core``) never loads torch;
- every subpackage declares ``__all__`` and every name in it exists.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "synapse_nb"
ALGORITHMS = ("core", "data", "sampling", "cubes", "features", "engine", "training", "analysis", "explain", "connectivity", "figures")
SUBPACKAGES = ALGORITHMS + ("pipeline", "ui")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of synapse_nb that ``path`` imports at run time (any depth, TYPE_CHECKING excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for b in node.body for n in ast.walk(b)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                mod = ".".join(base[: len(base) - node.level + 1] + ([mod] if mod else []))
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        graph[name] = {m for m in _imports(path) if m in files and m != name and not name.startswith(m + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ALGORITHMS)
def test_algorithm_packages_import_neither_pipeline_nor_ui(package: str):
    bad = []
    for name, deps in _graph().items():
        if name == f"synapse_nb.{package}" or name.startswith(f"synapse_nb.{package}."):
            bad += [f"{name} -> {d}" for d in deps if d.startswith(("synapse_nb.pipeline", "synapse_nb.ui"))]
    assert not bad, "\n".join(bad)


def test_ui_is_a_leaf():
    bad = [f"{name} -> {d}" for name, deps in _graph().items() if not name.startswith("synapse_nb.ui")
           for d in deps if d.startswith("synapse_nb.ui")]
    assert not bad, "\n".join(bad)


def test_validating_parameters_does_not_load_torch():
    code = (
        "import sys\n"
        "from synapse_nb.core.config import make_config\n"
        "make_config({'attention_layers': [3, 20], 'layer_num': 20})\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_subpackages_declare_their_public_names(package: str):
    mod = importlib.import_module(f"synapse_nb.{package}")
    assert mod.__all__, f"synapse_nb.{package} has an empty __all__"
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not missing, f"synapse_nb.{package}.__all__ names missing objects: {missing}"


def test_top_level_exposes_the_stage_subpackages():
    import synapse_nb

    assert set(SUBPACKAGES) <= set(synapse_nb.__all__)
    for name in SUBPACKAGES:
        assert getattr(synapse_nb, name).__name__ == f"synapse_nb.{name}"
