"""The package's shape: an acyclic import graph, no hidden imports, no private names across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mdcf"
# Imports that may wait inside a function: optional or heavy dependencies only.
LAZY_OK = ("matplotlib", "tqdm", "torch", "surprise", "orbax")
MAX_LINES = 550


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]):
    """``(target module, imported names, line, inside a function)`` of each import of ``path``."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    in_function = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(fn)}
    for node in ast.walk(tree):
        inner = id(node) in in_function
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, (), node.lineno, inner
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import module` imports the module
                full = f"{base}.{alias.name}"
                yield (full, (), node.lineno, inner) if full in modules else (base, (alias.name,), node.lineno, inner)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, _, _, _ in _imports(name, path, modules):
            if target in modules and target != name:
                edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_import_graph_of_mdcf_is_acyclic():
    edges = _graph()
    assert "mdcf.train.step" in edges and "mdcf.embeddings" in edges["mdcf.train.step"]  # the parser sees imports
    cycles = _cycles(edges)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_import_hides_inside_a_function():
    modules = _modules()
    hidden = [f"{path.relative_to(ROOT)}:{line} imports {target}"
              for name, path in modules.items()
              for target, _, line, inner in _imports(name, path, modules)
              if inner and not target.startswith(LAZY_OK)]
    assert not hidden, hidden


def test_modules_fit_a_few_screens():
    long = [f"{path.relative_to(ROOT)} ({n} lines)" for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert not long, long


@pytest.mark.parametrize("folder", ["mdcf", "benchmarks", "experiments"])
def test_no_private_name_crosses_a_module(folder):
    modules = _modules()
    crossing = []
    for path in (ROOT / folder).rglob("*.py"):
        tree = ast.parse(path.read_text())
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for target, names, line, _ in _imports(name, path, modules):
            crossing += [f"{path.relative_to(ROOT)}:{line} imports {target}.{n}" for n in names
                         if n.startswith("_") and not n.startswith("__") and target.startswith("mdcf")]
        imported = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and (node.module or "").startswith("mdcf") for alias in node.names}
        crossing += [f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}"
                     for node in ast.walk(tree)
                     if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                     and node.value.id in imported and node.attr.startswith("_") and not node.attr.startswith("__")]
    assert not crossing, crossing
