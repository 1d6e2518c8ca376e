"""``python -m cxr``: the same command as ``cxr``."""

from cxr.cli import app

app(prog_name="cxr")
