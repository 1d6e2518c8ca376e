"""The DVC graph is exact: each stage depends on every project module its command can import, and the
committed ``dvc.lock`` records the code that is committed."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "cxr"


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name (``cxr.data.split`` -> cxr/data/split.py), or None when not ours."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(node: ast.AST) -> set[str]:
    """Every module named by an import anywhere under ``node`` (function-level ones included)."""
    names: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            names.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            names.add(n.module)
            # ``from cxr.evaluation import figures`` imports the module cxr.evaluation.figures
            names.update(f"{n.module}.{a.name}" for a in n.names)
    return names


def project_imports(names: set[str]) -> set[Path]:
    """The project files behind ``names``, with the packages that contain them."""
    files: set[Path] = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            f = module_file(".".join(parts[:i]))
            if f is not None:
                files.add(f)
    return files


def import_closure(start: set[Path], entry: set[Path] = frozenset()) -> set[Path]:
    """Every project file reachable from ``start`` through imports; ``entry`` files count but are not walked."""
    seen: set[Path] = set(entry)
    todo = list(start - entry)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(project_imports(imported_names(ast.parse(f.read_text()))) - seen)
    return seen


def command_closure(command: str) -> set[Path]:
    """The files a ``python -m cxr COMMAND`` run can import: the CLI's module level and that command's body."""
    cli = REPO / PACKAGE / "cli.py"
    tree = ast.parse(cli.read_text())
    module_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    fn = funcs.get(command) or funcs.get(command.replace("-", "_"))
    assert fn is not None, f"cxr/cli.py has no function for the command {command!r}"
    names: set[str] = set()
    for node in module_level:
        names |= imported_names(node)
    # Helpers of cli.py called by the command (setup, _run, ...) are module-level functions of cli.py.
    called = {n.func.id for n in ast.walk(fn) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    for name in called & funcs.keys() | {fn.name}:
        names |= imported_names(funcs[name])
    # cli.py is walked only where the command runs (module level and the command), not every command's imports.
    entry = {cli, REPO / PACKAGE / "__main__.py"}
    return import_closure(project_imports(names) | {REPO / PACKAGE / "__init__.py"}, entry)


TEMPLATES = REPO / PACKAGE / "reporting" / "templates"
# {% include "x" %}, {% import "x" as m %}, {% from "x" import m %}, {% extends "x" %}
RENDERERS = {"render_html", "render_text", "get_template"}
TEMPLATE_REF = re.compile(r"""\{%-?\s*(?:include|import|from|extends)\s+["']([^"']+)["']""")


def rendered_templates(files: set[Path]) -> set[Path]:
    """The templates code in ``files`` renders (``render_html("x.html.j2", ...)``), with those they pull in."""
    todo = []
    for f in files:
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant):
                name = n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "")
                if name in RENDERERS and isinstance(n.args[0].value, str):
                    todo.append(TEMPLATES / n.args[0].value)
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        assert path.is_file(), f"{path.relative_to(REPO)} is rendered but does not exist"
        seen.add(path)
        todo.extend(TEMPLATES / name for name in TEMPLATE_REF.findall(path.read_text()))
    return seen


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def covered(rel: str, deps: list[str]) -> bool:
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


STAGES = sorted(stages())


def code_files(dep: str) -> list[str]:
    """The Python files a code dep stands for: the file itself, or every module of a folder (a subpackage)."""
    path = REPO / dep
    files = [path] if path.is_file() else sorted(path.rglob("*.py"))
    return [f.relative_to(REPO).as_posix() for f in files if "__pycache__" not in f.parts]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_cover_its_import_closure(stage: str) -> None:
    spec = stages()[stage]
    m = re.fullmatch(r"python -m cxr ([a-z_-]+)", spec["cmd"].strip())
    assert m, f"stage {stage}: cmd {spec['cmd']!r} is not `python -m cxr COMMAND`"
    deps = [d for d in spec.get("deps", []) if isinstance(d, str)]
    closure = {f.relative_to(REPO).as_posix() for f in command_closure(m.group(1))}
    missing = sorted(rel for rel in closure if not covered(rel, deps))
    assert not missing, f"dvc.yaml stage {stage!r} imports {missing} but does not list them in deps"
    # A folder dep (a whole subpackage) is exact only when the stage imports every module in it.
    code = [d for d in deps if d.startswith(f"{PACKAGE}/") and not covered(d, [TEMPLATES.relative_to(REPO).as_posix()])]
    extra = sorted(f for d in code for f in code_files(d) if f not in closure)
    assert not extra, f"dvc.yaml stage {stage!r} lists {extra}, which its command never imports (needless reruns)"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_cover_the_templates_it_renders(stage: str) -> None:
    spec = stages()[stage]
    command = re.fullmatch(r"python -m cxr ([a-z_-]+)", spec["cmd"].strip()).group(1)
    deps = [d for d in spec.get("deps", []) if isinstance(d, str)]
    used = {f.relative_to(REPO).as_posix() for f in rendered_templates(command_closure(command))}
    missing = sorted(rel for rel in used if not covered(rel, deps))
    assert not missing, f"dvc.yaml stage {stage!r} renders {missing} but does not list them in deps"
    listed = [d for d in deps if covered(d, ["cxr/reporting/templates"])]
    assert not listed or used, f"dvc.yaml stage {stage!r} lists {listed}, but renders no template (needless reruns)"


def test_template_closure_follows_includes() -> None:
    # The report renders its page and sections; each section template imports the shared macros.
    names = {f.name for f in rendered_templates(command_closure("report"))}
    assert {"report.html.j2", "report_metrics.html.j2", "macros.html.j2"} <= names
    assert not rendered_templates(command_closure("train"))


@pytest.mark.parametrize("stage", STAGES)
def test_stage_code_deps_exist(stage: str) -> None:
    for dep in stages()[stage].get("deps", []):
        if dep.startswith(f"{PACKAGE}/"):
            assert (REPO / dep).exists(), f"dvc.yaml stage {stage!r} depends on {dep}, which does not exist"


def test_closure_sees_function_level_imports() -> None:
    # The evaluate command imports cxr.evaluation.evaluate inside its function, which imports figures inside another.
    files = {f.relative_to(REPO).as_posix() for f in command_closure("evaluate")}
    assert {"cxr/evaluation/evaluate.py", "cxr/evaluation/figures.py", "cxr/core/config.py", "cxr/cli.py"} <= files
    assert "cxr/registry/register.py" not in files


def dvc_folder_md5(folder: Path) -> str:
    """The ``.dir`` hash DVC 3 records for a folder: md5 of the sorted (md5, relpath) list of its files, as JSON.

    Files .dvcignore leaves out (``__pycache__/``, ``*.tmp``) are not part of it.
    """
    entries = [
        {"md5": hashlib.md5(f.read_bytes()).hexdigest(), "relpath": f.relative_to(folder).as_posix()}
        for f in sorted(folder.rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".tmp"
    ]
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_lock_records_the_committed_code() -> None:
    """Every code file and folder in dvc.lock has the md5 it has now: the metrics came from this code."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    stale = []
    for name, stage in lock.items():
        for dep in stage.get("deps", []):
            path = REPO / dep["path"]
            if not dep["path"].startswith(f"{PACKAGE}/"):
                continue
            now = dvc_folder_md5(path) if path.is_dir() else hashlib.md5(path.read_bytes()).hexdigest()
            if now != dep.get("md5"):
                stale.append(f"{name}: {dep['path']}")
    assert not stale, f"dvc.lock records other versions of {stale}: rerun the pipeline and commit dvc.lock"


def test_lock_lists_every_stage_and_dep() -> None:
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(stages()), "dvc.lock and dvc.yaml name other stages"
    for name, spec in stages().items():
        locked = {d["path"] for d in lock[name].get("deps", [])}
        wanted = {d for d in spec.get("deps", []) if isinstance(d, str) and "${" not in d}
        assert wanted <= locked, f"dvc.lock stage {name!r} lacks deps {sorted(wanted - locked)}: rerun the pipeline"


def _params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _resolve(text: str, params: dict) -> str:
    def value(m: re.Match) -> str:
        node = params
        for part in m.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{([^}]+)\}", value, text)


@pytest.mark.parametrize("stage", STAGES)
def test_stage_params_exist(stage: str) -> None:
    params = _params()
    for key in stages()[stage].get("params", []):
        node = params
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml stage {stage!r} reads {key}, not in params.yaml"
            node = node[part]


def test_every_path_in_dvc_yaml_is_a_resolved_path() -> None:
    """dvc.yaml names no file that cxr.config does not: output names are defined once."""
    from cxr.core.config import load_settings

    params = _params()
    paths = load_settings(REPO / "params.yaml").paths(REPO)
    known = {
        getattr(paths, n).relative_to(REPO).as_posix()
        for n in dir(paths)
        if not n.startswith("_") and isinstance(getattr(paths, n, None), Path) and n != "root"
    }
    spec = yaml.safe_load(_resolve((REPO / "dvc.yaml").read_text(), params))
    named: set[str] = set()
    for stage in spec["stages"].values():
        for key in ("outs", "metrics", "plots", "deps"):
            for entry in stage.get(key, []):
                path = entry if isinstance(entry, str) else next(iter(entry))
                if not path.startswith("cxr/"):
                    named.add(path)
    for plot in spec.get("plots", []):
        for definition in plot.values():
            named.update(definition["y"])
    assert named - known == set(), f"dvc.yaml names paths cxr.config does not define: {sorted(named - known)}"
    assert "${" not in (REPO / "dvc.yaml").read_text().split("plots:")[-1].replace("${base.paths.", ""), (
        "the plots block spells a path without base.paths"
    )
