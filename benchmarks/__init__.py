"""Benchmarks that time the project against a baseline measured in the same run and report ratios.

``python -m benchmarks`` runs them all at full size; ``python -m benchmarks ingest train`` a subset;
``--size tiny`` shrinks each to seconds (the smoke test). Figures go to ``benchmarks/results.json``
(flat keys, merged with what is there) and, at full size, one dated line each to ``benchmarks/RESULTS.md``.
"""

#: The benchmarks in the order ``python -m benchmarks`` runs them (module names under this package).
BENCHMARKS: tuple[str, ...] = (
    "ingest",
    "input",
    "gradcam",
    "cam",
    "levers",
    "pyfunc",
    "flow",
    "drift",
    "gpu",
    "quality",
)
