"""params.yaml is laid out the way DVC's YAML writer writes it back, so `dvc exp run -S key=value` changes that
key's line and nothing else (no reflowed lists, no `null` rewritten, every comment kept)."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _set_params(path: Path, overrides: list[str]) -> None:
    """What `dvc exp run -S`/`--set-param` does to params.yaml (DVC's queue calls this, the Hydra override path)."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(path, overrides)


def _changes(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = [d for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:2] in ("- ", "+ ")]
    return [d[2:] for d in diff if d.startswith("- ")], [d[2:] for d in diff if d.startswith("+ ")]


#: (override, how its line reads after it): scalars, null to a value, a flow-style mapping's entry.
SETS = [
    ("train.lr=0.001", "  lr: 0.001                  # AdamW peak;"),
    ("train.epochs=12", "  epochs: 12"),
    ("train.batch_size=16", "  batch_size: 16"),
    ("train.patience=3", "  patience: 3"),  # null to a number
    ("train.weights=DEFAULT", "  weights: DEFAULT           # null: from scratch;"),
    ("train.augment.p=0.8", "    p: 0.8                   # chance of each step"),
    ("base.seed=7", "  seed: 7"),
    ("download.local.path=/data/covid.zip", "    path: /data/covid.zip    # a folder or the Kaggle zip"),
    ("split.mode=balanced", "  mode: balanced             # stratified (class proportions)"),
    ("tune.epochs=2", "  epochs: 2                  # per trial; null: train.epochs"),
    ("registry.min_sensitivity.COVID=0.6", "  min_sensitivity: {COVID: 0.6}"),
]


@pytest.fixture
def params(tmp_path: Path) -> Path:
    return Path(shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml"))


def test_dvc_writes_params_yaml_back_as_it_is(params: Path) -> None:
    from dvc.utils.serialize import modify_yaml

    with modify_yaml(params):
        pass
    assert params.read_text() == (REPO / "params.yaml").read_text()


@pytest.mark.parametrize(("override", "line"), SETS, ids=[o for o, _ in SETS])
def test_a_set_param_changes_its_line_only(params: Path, override: str, line: str) -> None:
    before = params.read_text()
    _set_params(params, [override])
    removed, added = _changes(before, params.read_text())
    assert len(removed) == 1 and len(added) == 1, (removed, added)
    assert added[0].startswith(line), added[0]
    key, value = override.split("=")
    node = yaml.safe_load(params.read_text())
    for part in key.split("."):
        node = node[part]
    assert str(node) == value


def test_a_list_param_changes_its_items_only(params: Path) -> None:
    before = params.read_text()
    _set_params(params, ["train.augment.gamma=[0.8,1.2]"])
    assert _changes(before, params.read_text()) == (["    - 0.85", "    - 1.15"], ["    - 0.8", "    - 1.2"])
