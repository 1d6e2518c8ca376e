"""The package's shape, as ARCHITECTURE.md states it: subpackages by job, imports only downwards, no cycles,
small modules and functions, and a split step that needs neither torch nor the training code."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cxr"

#: Each subpackage's layer: a module imports from its own subpackage or from a lower layer only, so two
#: subpackages of one layer (training and evaluation, say) never import each other.
LAYERS: dict[str, int] = {
    "core": 0,
    "ops": 1,
    "stats": 1,
    "data": 2,
    "model": 3,
    "training": 4,
    "evaluation": 4,
    "experiments": 5,
    "monitoring": 5,
    "reporting": 6,
    "serving": 7,
    "registry": 8,
}
#: The entry points above every layer.
TOP = {"cli", "__main__", "__init__"}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
#: Longer on purpose, with the reason (keep this list short).
LONG_FUNCTIONS: dict[str, str] = {}


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = f.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(f: Path) -> set[str]:
    """Every ``cxr`` module ``f`` imports, at module level or inside functions."""
    found: set[str] = set()
    known = modules()
    for n in ast.walk(ast.parse(f.read_text())):
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names if a.name.split(".")[0] == "cxr")
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module and n.module.split(".")[0] == "cxr":
            found.add(n.module)
            found.update(f"{n.module}.{a.name}" for a in n.names if f"{n.module}.{a.name}" in known)
    return {m for m in found if m in known}


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_subpackage_has_a_layer() -> None:
    found = {subpackage(m) for m in modules()} - TOP
    assert found == set(LAYERS), f"subpackages without a layer, or layers without a subpackage: {found ^ set(LAYERS)}"


def test_imports_point_down_only() -> None:
    wrong = []
    for module, f in modules().items():
        own = subpackage(module)
        if own in TOP:
            continue
        for target in imports(f):
            other = subpackage(target)
            if other == own or other == "__init__":
                continue
            if other in TOP or LAYERS[other] >= LAYERS[own]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that point up or sideways (see ARCHITECTURE.md):\n" + "\n".join(sorted(wrong))


def test_no_import_cycles() -> None:
    graph = {m: imports(f) - {m} for m, f in modules().items()}
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph.get(m, ())):
            if state[t] == 1:
                cycles.append([*stack[stack.index(t) :], t])
            elif state[t] == 0:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if state[m] == 0:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_modules_and_functions_are_small() -> None:
    too_long = []
    for module, f in modules().items():
        text = f.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{module}: {len(text.splitlines())} lines")
        for n in ast.walk(ast.parse(text)):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = n.end_lineno - n.lineno + 1
                if length > MAX_FUNCTION_LINES and f"{module}.{n.name}" not in LONG_FUNCTIONS:
                    too_long.append(f"{module}.{n.name}: {length} lines")
    assert not too_long, f"over {MAX_MODULE_LINES} lines a module or {MAX_FUNCTION_LINES} a function: {too_long}"


@pytest.mark.parametrize("flows_dir", ["flows", "tasks"])
def test_orchestration_imports_steps_not_internals(flows_dir: str) -> None:
    """The Prefect code calls steps and their result types; it never reaches into a step's private helpers."""
    private = []
    for f in (REPO / flows_dir).rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("cxr"):
                private += [f"{f.name}: {n.module}.{a.name}" for a in n.names if a.name.startswith("_")]
    assert not private, private


def test_the_split_step_imports_no_torch_and_no_training_code() -> None:
    """The split stage's entry point, in a fresh process: an edit to training code can never re-run the split."""
    code = (
        "import sys\n"
        "import cxr.cli\n"
        "from cxr.data.split import split\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'kornia', "
        "'albumentations', 'mlflow', 'prefect') or m.startswith(('cxr.training', 'cxr.model', 'cxr.evaluation'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"the split step imports {proc.stdout.strip()}"


def test_test_modules_have_unique_names_and_one_conftest() -> None:
    """Test folders are not packages (pytest's prepend import mode): two test modules of one name, or a second
    conftest.py, would shadow each other."""
    tests = REPO / "tests"
    names = [f.name for f in tests.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
    assert [f.relative_to(REPO).as_posix() for f in tests.rglob("conftest.py")] == ["tests/conftest.py"]
    assert not list(tests.rglob("__init__.py"))


def test_the_training_code_imports_no_mlflow_prefect_or_dvc() -> None:
    """Every module of cxr/training, in a fresh process: it runs on bare GPU machines. `cxr train` wires the live
    MLflow run (cxr.ops.trainrun) in from the command line, through the loop's ``on_epoch``."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import cxr.training\n"
        "for m in pkgutil.walk_packages(cxr.training.__path__, 'cxr.training.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'prefect', 'dvc') "
        "or m in ('cxr.ops.trainrun', 'cxr.ops.tracking')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"the training code imports {proc.stdout.strip()}"
