"""The one place that reads ``params.yaml``: typed, validated settings for every step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from cxr.core.paths import ResolvedPaths
from cxr.core.search import Tune
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
        extra = ", ".join(e["name"] for e in self.train.augment.extra)
        if self.train.augment_backend == "device" and extra:
            raise ValueError(
                f"train.augment_backend 'device' runs only the built-in augmentation steps (Kornia), not "
                f"train.augment.extra ({extra}): set train.augment_backend to cpu or auto"
            )
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


#: The longest message a params error prints for one key: a value is never echoed whole.
MAX_MESSAGE = 300


def _short(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid params"]
    for e in err.errors():
        # A list item reads as in the file's terms: train.augment.extra[1], not train.augment.extra.1.
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {_short(key, 120)}: {_short(msg)}")
    return "\n".join(lines)


class _ParamsLoader(yaml.SafeLoader):
    """YAML as DVC reads it, no more: a duplicate key or an alias (``&a``/``*a``) is an error, not a value.

    DVC's parser refuses a duplicate key that PyYAML would silently take the last value of; and an alias can
    expand a few lines into billions of values (a "billion laughs" file), which no params file needs.
    """

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise ConfigError(f"line {mark.line + 1}: anchors and aliases (&name, *name) are not allowed in params")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"line {key_node.start_mark.line + 1}: duplicate key {_short(repr(key), 80)} "
                    f"(first on line {seen[key]})"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def read_params(path: Path | str) -> dict[str, Any]:
    """The params file as a mapping, read the way DVC reads it; ConfigError naming the file otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err})") from None
    empty = ConfigError(f"{path}: empty; DVC refuses an empty params file (see params.yaml in the repository)")
    if not text.strip():
        raise empty
    try:
        data = yaml.load(text, Loader=_ParamsLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as err:
        raise ConfigError(f"{path}, {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {_short(str(err))}") from None
    if data is None:
        raise empty
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


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
    return parse_settings(read_params(path), str(path))
