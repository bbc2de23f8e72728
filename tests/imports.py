"""The project's own import graph, read from the source (ast), for the tests that keep the house in order:
which project files a module runs (for a stage's DVC deps) and which imports which (no circle, no upward
arrow). Every import counts, also one inside a function: it runs when that code does."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lifelong", "pipeline")


def module_file(module: str) -> Path | None:
    """The file of a project module (a package: its __init__.py), None when it is not the project's."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def imports(path: Path) -> frozenset[Path]:
    """The project files `path` imports directly: each module named, its parent packages' __init__.py
    (Python runs them first), and for `from package import name`, the submodule `name` when it is one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            named.add(base)
            named.update(f"{base}.{alias.name}" for alias in node.names)
    found: set[Path] = set()
    for module in named:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # a.b.c runs a/__init__, a/b/__init__, then a/b/c
            file = module_file(".".join(parts[:i]))
            if file is not None:
                found.add(file)
    found.discard(path)
    return frozenset(found)


def closure(path: Path) -> set[Path]:
    """Every project file that running `path` can import, transitively."""
    seen, todo = {path}, [path]
    while todo:
        for dep in imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def project_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def edges(path: Path) -> frozenset[Path]:
    """`imports(path)` without the __init__.py of the packages `path` lies in: Python runs those first
    whatever `path` says, so they are its containers, not its dependencies (a package's __init__ that
    imports its submodules is no circle)."""
    containers = {parent / "__init__.py" for parent in path.parents}
    return frozenset(dep for dep in imports(path) if dep not in containers)


def cycles() -> list[list[str]]:
    """The strongly connected components of more than one file (Tarjan) over `edges`, as repository paths."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    found: list[list[str]] = []

    def visit(v: Path) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(str(w.relative_to(REPO)))
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for file in project_files():
        if file not in index:
            visit(file)
    return found
