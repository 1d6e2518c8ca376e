"""What ingestion produced: its report, one record per ingested image, and the files it refused."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BadFile:
    """A file refused by validation, with the reason."""

    path: str
    reason: str


@dataclass(frozen=True)
class ImageRecord:
    """One ingested image: where it went, its hashes and properties."""

    cls: str
    path: str
    original: str
    sha256: str
    dhash: int
    width: int
    height: int
    mode: str
    format: str
    nbytes: int
    source: str
    mask: str | None = None


@dataclass
class IngestReport:
    """What ingest() did: counts per class, bad files, sources, duplicates."""

    dest: Path
    layout: str
    counts: dict[str, int]
    masks: dict[str, int]
    bad: list[BadFile]
    sources: dict[str, dict[str, int]]
    source: str = ""
    duplicates: list[list[str]] = field(default_factory=list)
    conflicts: list[list[str]] = field(default_factory=list)
    count_mismatch: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    records: list[ImageRecord] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing was refused, counts match and no image sits in two classes."""
        return not self.bad and not self.count_mismatch and not self.conflicts

    def to_dict(self, include_records: bool = False) -> dict:
        """JSON-ready summary (records only when asked: they are one entry per image)."""
        out = {
            "dest": str(self.dest),
            "source": self.source,
            "layout": self.layout,
            "ok": self.ok,
            "total": sum(self.counts.values()),
            "counts": dict(self.counts),
            "masks": dict(self.masks),
            "bad": [asdict(b) for b in self.bad],
            "sources": {k: dict(v) for k, v in self.sources.items()},
            "duplicates": [list(g) for g in self.duplicates],
            "conflicts": [list(g) for g in self.conflicts],
            "count_mismatch": {k: dict(v) for k, v in self.count_mismatch.items()},
            "warnings": list(self.warnings),
            "elapsed_s": round(self.elapsed_s, 3),
        }
        if include_records:
            out["records"] = [asdict(r) for r in self.records]
        return out

    def to_json(self, include_records: bool = False) -> str:
        """to_dict() as indented JSON."""
        return json.dumps(self.to_dict(include_records), indent=2, sort_keys=True)
