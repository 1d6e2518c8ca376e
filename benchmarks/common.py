"""What every benchmark shares: outcomes, the printed table, results.json, RESULTS.md lines, machine info."""

from __future__ import annotations

import datetime as _dt
import json
import operator
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
RESULTS_JSON = HERE / "results.json"
RESULTS_MD = HERE / "RESULTS.md"
SIZES: tuple[str, ...] = ("tiny", "full")

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
}


def setup_process(threads: int | None) -> None:
    """A benchmark process's threads and logging: the main one (``--threads``) and each side-by-side run's.

    ``threads`` sets torch's, OpenMP's and OpenCV's pools (OpenCV's warps and resizes would otherwise use every
    core), in the environment too, before torch is imported, so that subprocesses inherit it.
    """
    import logging

    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def quiet_env() -> None:
    """Telemetry off for everything the benchmarks start (DVC, Prefect, MLflow, Albumentations)."""
    from cxr.cli import quiet_telemetry

    quiet_telemetry()


@dataclass(frozen=True)
class Row:
    """One line of a benchmark's table: our figure, the baseline measured in the same run, their ratio."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    ratio: float | None = None


@dataclass(frozen=True)
class Figure:
    """A headline number written to results.json under ``key``, with its goal such as ('>=', 400)."""

    key: str
    value: float
    goal: tuple[str, float] | None = None

    @property
    def met(self) -> bool | None:
        """Whether the goal is met (None without a goal or a value)."""
        if self.goal is None or self.value is None:
            return None
        return _OPS[self.goal[0]](self.value, self.goal[1])

    def goal_text(self) -> str:
        """The goal as text, e.g. '>= 400'."""
        return "no goal" if self.goal is None else f"{self.goal[0]} {self.goal[1]:g}"


@dataclass
class Outcome:
    """What one benchmark measured: its table, headline figures, further flat keys and notes."""

    name: str
    rows: list[Row] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    extra: dict[str, float | int | str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def keys(self) -> dict[str, float | int | str]:
        """The flat keys for results.json."""
        out = {f.key: _round(f.value) for f in self.figures}
        out.update({k: _round(v) for k, v in self.extra.items()})
        return out


def _round(v):
    return round(float(v), 4) if isinstance(v, float) else v


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """Wall-clock seconds of the block, in ``result['s']``."""
    t0 = time.perf_counter()
    out: dict[str, float] = {}
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t0


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def table(outcome: Outcome) -> str:
    """The outcome as a plain-text table (name, value, unit, baseline, ratio), then figures and notes."""
    head = ("benchmark", "value", "unit", "baseline", "ratio")
    rows = [head] + [(r.name, _fmt(r.value), r.unit, _fmt(r.baseline), _fmt(r.ratio)) for r in outcome.rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"== {outcome.name} =="]
    if outcome.skipped:
        return "\n".join(lines + [f"skipped: {outcome.skipped}"])
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(c.ljust(w) if j in (0, 2) else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for f in outcome.figures:
        state = {True: "met", False: "MISSED", None: ""}[f.met]
        lines.append(f"{f.key} = {_fmt(f.value)}  (goal {f.goal_text()}) {state}".rstrip())
    lines += [f"note: {n}" for n in outcome.notes]
    return "\n".join(lines)


def machine_info() -> dict[str, object]:
    """CPU count, library versions, accelerator and date of this run."""
    import torch

    info: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.date.today().isoformat(),
        "description": machine_description(),
    }
    return info


def machine_description() -> str:
    """How RESULTS.md names the machine: ``BENCH_MACHINE`` when set, else the CPU count."""
    return os.environ.get("BENCH_MACHINE") or f"{os.cpu_count()}-core CPU"


def write_results(path: Path, outcomes: list[Outcome]) -> dict:
    """Merge the outcomes' keys and this machine's info into the JSON file at ``path`` (atomically)."""
    data: dict = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}); fix or remove it") from None
    for o in outcomes:
        data.update(o.keys())
    data["machine"] = machine_info()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return data


def record_lines(path: Path, outcomes: list[Outcome], command: str) -> list[str]:
    """Append one dated line per headline figure to RESULTS.md: command, machine, figure, goal, met/missed."""
    import torch

    today = _dt.date.today().isoformat()
    machine = f"{machine_description()}, torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"
    lines = []
    for o in outcomes:
        if o.skipped:
            lines.append(f"- {today} · `{command}` · {machine} · {o.name}: skipped ({o.skipped})")
        for f in o.figures:
            state = {True: "met", False: "missed", None: "no goal"}[f.met]
            lines.append(
                f"- {today} · `{command}` · {machine} · `{f.key}` = {_fmt(f.value)} (goal {f.goal_text()}): {state}"
            )
    if lines:
        with path.open("a") as fh:
            fh.write("\n".join(lines) + "\n")
    return lines


def command_line() -> str:
    """The command as typed, for RESULTS.md."""
    return " ".join(["python -m benchmarks", *sys.argv[1:]])


def tail(text: str, n: int = 2000) -> str:
    """The last ``n`` characters of a command's output, for error messages."""
    return text[-n:]


def synthetic_dataset(work: Path, size: str) -> Path:
    """The synthetic dataset for ``size`` under ``work``, generated once and reused while its counts match."""
    import json as _json
    import shutil

    from cxr.core.sections import FULL_COUNTS
    from cxr.data.synthetic import generate

    counts, px = (dict(FULL_COUNTS), 299) if size == "full" else ({c: 6 for c in FULL_COUNTS}, 64)
    out = work / f"synthetic-{size}-{px}-s0"
    meta = out / "synthetic.json"
    if meta.is_file():
        info = _json.loads(meta.read_text())
        if info.get("counts") == counts and info.get("size") == px and info.get("seed") == 0:
            return out
    if out.exists():  # a partial or different dataset: synthetic.json is written last, so regenerate
        shutil.rmtree(out)
    generate(out, counts, size=px, seed=0, workers=os.cpu_count() or 1)
    return out


def git_dvc_repo(root: Path) -> Path:
    """A fresh, empty git + DVC repository at ``root`` (removed first when it exists)."""
    import shutil
    import subprocess

    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "b",
        "GIT_AUTHOR_EMAIL": "b@b",
        "GIT_COMMITTER_NAME": "b",
        "GIT_COMMITTER_EMAIL": "b@b",
    }
    subprocess.run(["git", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "init"], cwd=root, check=True, env=env)
    return root


def trained_project(root: Path, params: dict):
    """A fresh git + DVC project at ``root`` with ``params``, trained by the pipeline's own steps (download, split,
    train): (settings, paths)."""
    import yaml

    from cxr.core.config import parse_settings
    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.training.loop import train

    root = git_dvc_repo(root)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    s = parse_settings(params)
    paths = s.paths(root)
    download(s.base, s.download, paths)
    split(s.base, s.split, paths)
    train(s.train, s.base, paths, resume=False)
    return s, paths
