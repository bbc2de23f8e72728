"""The house in order, read from the source: no import circle, arrows that point down only, and DVC
stage deps that list every project module a stage runs (so an edit that can change a stage's result
re-runs it, and no edit re-runs a stage that does not run the edited code)."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from tests.imports import REPO, closure, cycles, imports, project_files

# The rooms, innermost first: a file may import its own room and the rooms before it, never one after it.
ROOMS = ("library", "stage glue", "services", "devtools")


def room(path) -> str:
    rel = path.relative_to(REPO).as_posix()
    if rel.startswith("lifelong/"):
        return "library"
    if rel.startswith("pipeline/services/"):
        return "services"
    if rel.startswith("pipeline/devtools/"):
        return "devtools"
    return "stage glue"


# Project modules a stage imports that cannot change what it writes: editing them must not re-run it.
OPERATIONAL = {
    "pipeline/stage.py": "how a stage process starts (warm or cold) and prints a user error",
    "pipeline/layout.py": "where files are (a moved output is a dvc.yaml edit, which DVC sees) and how JSON is written",
    "pipeline/cluster.py": "which Ray cluster runs the workers and the code it ships them (checked by digest)",
    "pipeline/tracking.py": "what is logged to the MLflow runs, not what is trained",
    "pipeline/stackclient.py": "the team stack's MLflow credentials",
}
# Code a stage runs without importing it.
READ_AS_CODE = {
    "pipeline/train.py": ["pipeline/pyfunc_model.py"],  # registered as the model's code (registry.PYFUNC_CODE)
}
STAGE_FILES = ("dvc.yaml", "tune/dvc.yaml")


def _docstring_only(path) -> bool:
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def stages() -> list[tuple[str, str, str, list[str]]]:
    """(dvc file, stage name, the file of the module its command runs, deps) of every stage."""
    found = []
    for name in STAGE_FILES:
        for stage, spec in yaml.safe_load((REPO / name).read_text())["stages"].items():
            spec = spec.get("do", spec)  # a foreach stage's template
            module = re.search(r"python -m (pipeline\.\w+)", spec["cmd"])
            assert module, f"{name} stage {stage}: its command runs no project module: {spec['cmd']}"
            found.append((name, stage, module.group(1).replace(".", "/") + ".py", list(spec.get("deps", []))))
    return found


def needed(module_file) -> set[str]:
    """The project files a stage's module runs that can change its result."""
    files = {p.relative_to(REPO).as_posix() for p in closure(module_file) if not _docstring_only(p)}
    for file in list(files):
        files.update(READ_AS_CODE.get(file, []))
    return files - set(OPERATIONAL)


def covers(dep: str, file: str) -> bool:
    return file == dep or file.startswith(dep.rstrip("/") + "/")


def test_no_import_circle():
    assert cycles() == [], "modules that import each other (move the shared part into a module of its own)"


def test_imports_point_down_only():
    upward = []
    for file in project_files():
        for dep in imports(file):
            if ROOMS.index(room(dep)) > ROOMS.index(room(file)):
                upward.append(f"{file.relative_to(REPO)} ({room(file)}) imports {dep.relative_to(REPO)} ({room(dep)})")
    assert upward == []


@pytest.mark.parametrize("dvc_file,stage,module,deps", stages(), ids=[f"{f}:{s}" for f, s, _, _ in stages()])
def test_stage_deps_list_every_module_that_can_change_its_result(dvc_file, stage, module, deps):
    run = needed(REPO / module)
    code_deps = [d for d in deps if d.split("/")[0] in ("lifelong", "pipeline") and "${" not in d]

    missing = sorted(f for f in run if not any(covers(d, f) for d in code_deps))
    assert not missing, f"{dvc_file} stage {stage}: add to deps {missing} (or to OPERATIONAL, with the reason)"
    gone = [d for d in code_deps if not (REPO / d).exists()]
    assert not gone, f"{dvc_file} stage {stage}: deps {gone} no longer exist"
    modules = [d for d in code_deps if d.endswith(".py") or (REPO / d / "__init__.py").exists()]
    unused = [d for d in modules if not any(covers(d, f) for f in run)]
    assert not unused, f"{dvc_file} stage {stage}: deps {unused} are code the stage never runs (drop them)"


def test_operational_modules_are_real_and_run_by_some_stage():
    run = set().union(*(closure(REPO / module) for _, _, module, _ in stages()))
    assert set(OPERATIONAL) <= {p.relative_to(REPO).as_posix() for p in run}, "OPERATIONAL names a module no stage runs"
