"""The one place that reads ``params.yaml``: typed, validated settings for every step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from cxr.core.paths import ResolvedPaths
from cxr.core.sections import (
    Base,
    ConfigError,
    Download,
    Drift,
    Evaluate,
    GradCam,
    Registry,
    Section,
    Split,
    Train,
    Tune,
    check_split_fits,
)


class Settings(Section):
    """All of ``params.yaml``."""

    base: Base = Field(default_factory=Base)
    download: Download = Field(default_factory=Download)
    split: Split = Field(default_factory=Split)
    train: Train = Field(default_factory=Train)
    evaluate: Evaluate = Field(default_factory=Evaluate)
    gradcam: GradCam = Field(default_factory=GradCam)
    registry: Registry = Field(default_factory=Registry)
    drift: Drift = Field(default_factory=Drift)
    tune: Tune = Field(default_factory=Tune)

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        labels = self.base.labels
        pos = self.evaluate.positive_class
        if pos is not None and pos not in labels:
            raise ValueError(f"evaluate.positive_class {pos!r} is not one of base.classes {list(labels)}")
        for cls in self.registry.min_sensitivity:
            if cls not in labels:
                raise ValueError(f"registry.min_sensitivity names {cls!r}, which is not one of base.classes")
        if self.download.source == "synthetic":
            counts = self.download.synthetic.counts(self.base.folders)
            per_label: dict[str, int] = {}
            for folder, n in counts.items():
                label = self.base.folder_to_label[folder]
                per_label[label] = per_label.get(label, 0) + n
            check_split_fits(self.split, per_label)
        return self

    def paths(self, root: Path) -> ResolvedPaths:
        """Absolute paths under the project root."""
        return self.base.paths.resolve(root)

    def fingerprint(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none)."""
        data = self.model_dump(mode="json")
        if sections:
            data = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid params"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}")
    return "\n".join(lines)


def parse_settings(data: dict[str, Any] | None, source: str = "params") -> Settings:
    """Validate a params mapping; errors name ``source`` and every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_settings(path: Path | str = "params.yaml") -> Settings:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_settings(data, str(path))
