"""Progress of a long loop: a bar on a terminal, a log line at a steady interval everywhere else.

On a terminal (``sys.stderr`` is a TTY) a tqdm bar shows the count, the rate and the time left. When the output
is a file or a pipe (DVC under Prefect, CI, ``make run > log``) there is no bar, which would fill the file with
carriage returns; instead a line is logged every ``interval_s`` seconds (30 by default, ``CXR_PROGRESS_S`` sets
it): what runs, how far, how fast, and the time left, so that a slow run can be told from a hung one.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

#: Environment variable: seconds between progress lines when the output is not a terminal.
INTERVAL_ENV = "CXR_PROGRESS_S"
DEFAULT_INTERVAL_S = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


class Progress:
    """Counts units of a loop (``update``); on a terminal a tqdm bar, otherwise a log line every few seconds."""

    def __init__(
        self, total: int, desc: str, unit: str = "img", logger: logging.Logger | None = None, enabled: bool = True
    ) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.log = logger or logging.getLogger("cxr.progress")
        self.enabled = enabled
        self.count = 0
        self.start = self._last = time.perf_counter()
        self.interval = _interval()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` more units; ``postfix`` (e.g. the loss) is shown on the bar and in the line."""
        self.count += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last >= self.interval and self.count < self.total:
            self._last = now
            self.log.info("%s", self.line(now, postfix))

    def line(self, now: float, postfix: dict[str, Any] | None = None) -> str:
        """What the log line says: ``desc: done/total unit (pct), rate unit/s, ETA m:ss``."""
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        left = (self.total - self.count) / rate if rate > 0 else float("inf")
        eta = _duration(left) if left != float("inf") else "?"
        pct = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k} {v}" for k, v in (postfix or {}).items())
        return f"{self.desc}: {self.count}/{self.total} {self.unit}{pct}, {rate:.1f} {self.unit}/s, ETA {eta}{extra}"

    def close(self) -> float:
        """Close the bar; the seconds since the start."""
        if self.bar is not None:
            self.bar.close()
        return time.perf_counter() - self.start

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
