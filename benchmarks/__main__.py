"""``python -m benchmarks [NAME ...] [--size tiny|full]``: run benchmarks, print tables, record results."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from pathlib import Path

from benchmarks import BENCHMARKS
from benchmarks.common import (
    RESULTS_JSON,
    RESULTS_MD,
    SIZES,
    WORK,
    command_line,
    quiet_env,
    record_lines,
    setup_process,
    table,
    write_results,
)

#: Other names accepted on the command line.
ALIASES: dict[str, str] = {"train": "input", "explain": "cam", "serving": "pyfunc", "recipe": "quality"}


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (all by default); exit 1 when one fails."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--size", choices=SIZES, default="full", help="full (make bench) or tiny (smoke test)")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"results JSON to merge into (default: {RESULTS_JSON.name} at full size, "
        "results-tiny.json in the work folder at tiny size)",
    )
    parser.add_argument("--notes", type=Path, default=RESULTS_MD, help="RESULTS.md to append dated lines to")
    parser.add_argument("--no-record", action="store_true", help="do not append lines to RESULTS.md")
    parser.add_argument("--work", type=Path, default=WORK, help="work folder (caches, throw-away projects)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/OpenMP threads per process (default: torch's choice); also passed to subprocesses",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="training runs side by side, each in its own process (quality); the others run one "
        "at a time. Without --threads, each process gets its share of the cores",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=None,
        help="a trained project folder (params.yaml, its model and test split) for the benchmarks that explain a "
        "trained model (cam), instead of training one",
    )
    args = parser.parse_args(argv)

    if args.results is None:  # a smoke run never overwrites the recorded full-size figures
        args.results = RESULTS_JSON if args.size == "full" else args.work / "results-tiny.json"
    names = []
    for n in args.names or BENCHMARKS:
        n = ALIASES.get(n, n)
        if n not in BENCHMARKS:
            parser.error(f"unknown benchmark {n!r}; choose from {', '.join(BENCHMARKS)}")
        if n not in names:
            names.append(n)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.jobs > 1 and args.threads is None:  # N processes each taking every core would oversubscribe the CPU
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    quiet_env()
    setup_process(args.threads)  # before the benchmark modules, which import torch lazily

    failed = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            accepted = inspect.signature(module.run).parameters
            options = {k: v for k, v in (("jobs", args.jobs), ("project", args.project)) if k in accepted}
            outcome = module.run(args.size, args.work, **options)
        except Exception as err:  # one failing benchmark must not hide the others' figures
            logging.getLogger("benchmarks").exception("benchmark %s failed", name)
            failed.append(f"{name}: {err}")
            continue
        print(table(outcome), flush=True)
        print(flush=True)
        if outcome.skipped:  # measured nothing: results.json and RESULTS.md stay as they are
            continue
        # Written after each benchmark, so a later failure keeps the earlier figures.
        write_results(args.results, [outcome])
        if args.size == "full" and not args.no_record:
            record_lines(args.notes, [outcome], command_line())
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
