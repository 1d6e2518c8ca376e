"""Atomic file output and small readers: a crash never leaves a half-written file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the served model reads images through this module without pydantic
    pass



def write_json(path: Path, data, sort_keys: bool = False) -> None:
    """Write JSON atomically: a crash never leaves a half-written metrics or report file."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
    os.replace(tmp, path)
