"""The one validated config: real params load; bad keys, types and values fail naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, deep_update, real_params

from cxr.core.config import load_settings, parse_settings
from cxr.core.sections import DATASET_CLASSES, ConfigError, SplitTooLarge


def test_real_params_load_with_four_classes() -> None:
    s = load_settings(REPO / "params.yaml")
    assert s.base.labels == DATASET_CLASSES
    assert s.split.valid == 400 and s.split.test == 400
    assert s.download.source == "synthetic"


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"train": {"epochs": -1}}, "train.epochs"),
        ({"train": {"epochs": "ten"}}, "train.epochs"),
        ({"train": {"learning_rate": 0.1}}, "train.learning_rate"),
        ({"bogus": 1}, "bogus"),
        ({"split": {"valid": 0}}, "split.valid"),
        ({"train": {"augment": {"gamma": [1.2, 0.8]}}}, "train.augment.gamma"),
        ({"train": {"arch": "resnet9000"}}, "train.arch"),
        ({"train": {"mixup": -0.2}}, "train.mixup"),
        ({"base": {"classes": ["COVID", "Pneumonia"]}}, "base.classes"),
        ({"evaluate": {"positive_class": "Covid"}}, "positive_class"),
        ({"download": {"source": "local"}}, "download.local.path"),
        ({"download": {"max_pixels": 100}}, "download.max_pixels"),
    ],
)
def test_bad_values_name_the_key(change: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(deep_update(real_params(), change), "params.yaml")
    assert key in str(err.value)
    assert "params.yaml" in str(err.value)


def test_split_larger_than_a_class_is_refused_before_any_work() -> None:
    params = deep_update(real_params(), {"download": {"synthetic": {"per_class": 150}}})
    with pytest.raises(ConfigError) as err:
        parse_settings(params)
    assert "split.valid" in str(err.value) and "class" in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_split_check_balanced_mode() -> None:
    from cxr.core.sections import Split, check_split_fits

    check_split_fits(Split(mode="balanced", valid=8, test=8), {"a": 10, "b": 10})
    with pytest.raises(SplitTooLarge, match="'b'"):
        check_split_fits(Split(mode="balanced", valid=8, test=8), {"a": 50, "b": 4})


def test_three_class_and_binary_tasks_are_params_changes() -> None:
    three = parse_settings(deep_update(real_params(), {"base": {"classes": ["COVID", "Normal", "Viral Pneumonia"]}}))
    assert three.base.labels == ("COVID", "Normal", "Viral Pneumonia")
    assert three.base.folders == ("COVID", "Normal", "Viral Pneumonia")
    binary = parse_settings(
        deep_update(
            real_params(),
            {"base": {"classes": {"COVID": ["COVID"], "non-COVID": ["Normal", "Lung_Opacity", "Viral Pneumonia"]}}},
        )
    )
    assert binary.base.labels == ("COVID", "non-COVID")
    assert binary.base.folder_to_label["Lung_Opacity"] == "non-COVID"
    assert set(binary.base.folders) == set(DATASET_CLASSES)


def test_a_folder_used_twice_is_refused() -> None:
    with pytest.raises(ConfigError, match="used twice"):
        parse_settings(deep_update(real_params(), {"base": {"classes": {"a": ["COVID"], "b": ["COVID", "Normal"]}}}))


def test_missing_or_broken_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("base: [unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load_settings(bad)


def test_cli_rejects_unknown_key_before_writing_anything(tmp_path: Path) -> None:
    params = deep_update(real_params(), {"train": {"epochz": 3}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, "-m", "cxr", "split", "--params", str(tmp_path / "params.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "train.epochz" in proc.stderr and "unknown key" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_fingerprint_changes_with_the_section() -> None:
    a = parse_settings(real_params())
    b = parse_settings(deep_update(real_params(), {"evaluate": {"n_boot": 10}}))
    assert a.fingerprint("train") == b.fingerprint("train")
    assert a.fingerprint("evaluate") != b.fingerprint("evaluate")


def test_config_defaults_are_the_params_file() -> None:
    """params.yaml holds the values; cxr.config's defaults may not drift from them (one source per value)."""
    from cxr.core.config import Settings, load_settings

    defaults = Settings().model_dump(mode="json")
    params = load_settings(REPO / "params.yaml").model_dump(mode="json")

    def diff(a, b, prefix=""):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                yield from diff(a.get(k), b.get(k), f"{prefix}{k}.")
        elif a != b:
            yield f"{prefix.rstrip('.')}: default {a!r}, params.yaml {b!r}"

    assert list(diff(defaults, params)) == []


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"train.lr": {"low": -1, "high": 0.1, "log": True}}, "log range needs low > 0"),
        ({"train.lr": {"low": 0.1, "high": 0.01}}, "must be below high"),
        ({"train.learning_rate": {"low": 0.1, "high": 1}}, "train.learning_rate: unknown key"),
        ({"evaluate.n_boot": {"choices": [10]}}, "only train.* settings"),
        ({"train.batch_size": {"choices": [0, 16]}}, "train.batch_size=0 is not a valid setting"),
        ({"train.augment.p": {"low": 0.5, "high": 2}}, "train.augment.p=2.0 is not a valid setting"),
        ({"train.lr": {"low": 0.1}}, "needs low and high"),
    ],
)
def test_tune_space_is_validated(space: dict, message: str) -> None:
    params = real_params()
    params["tune"]["space"] = space
    with pytest.raises(ConfigError) as err:
        parse_settings(params, "params.yaml")
    assert "tune.space" in str(err.value) and message in str(err.value)


BOMB = """\
a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""


def _params_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.timeout(60)
def test_an_alias_bomb_is_refused_at_once_naming_the_line(tmp_path: Path) -> None:
    """An alias in a value the validator echoes (a search space's choices) once expanded into hundreds of
    millions of values before the message was written: aliases are refused while the file is read."""
    text = (REPO / "params.yaml").read_text()
    assert "train.batch_size: {choices: [16, 32, 64]}" in text
    path = _params_file(tmp_path, BOMB + text.replace("{choices: [16, 32, 64]}", "{choices: *g}"))
    with pytest.raises(ConfigError, match=r"params.yaml, line 1: anchors and aliases") as err:
        load_settings(path)
    assert len(str(err.value)) < 300
    path = _params_file(tmp_path, text + "extra: &x 1\nmore: *x\n")
    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_settings(path)


def test_a_duplicate_key_is_refused_as_dvc_refuses_it(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys, DVC refuses the file: a hand-run step and `dvc repro` disagreed."""
    text = (REPO / "params.yaml").read_text()
    path = _params_file(tmp_path, text.replace("  epochs: 8\n", "  epochs: 8\n  epochs: 3\n", 1))
    with pytest.raises(ConfigError, match=r"line \d+: duplicate key 'epochs' \(first on line \d+\)"):
        load_settings(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_params_file_is_refused(tmp_path: Path, text: str) -> None:
    """An empty file once meant every default, so the full synthetic dataset; DVC refuses it."""
    with pytest.raises(ConfigError, match="params.yaml: empty"):
        load_settings(_params_file(tmp_path, text))


def test_an_error_never_echoes_a_value_whole(tmp_path: Path) -> None:
    params = real_params()
    params["tune"]["space"]["train.batch_size"] = {"choices": [-1] * 100_000}
    with pytest.raises(ConfigError) as err:
        load_settings(_params_file(tmp_path, yaml.safe_dump(params)))
    assert "tune.space" in str(err.value) and len(str(err.value)) < 1000


def test_extra_augmentation_steps_are_checked_when_params_load() -> None:
    """Their shape, and that the device path (built-in steps only) is not asked to run them; Albumentations
    itself checks each step in the train step (tests/unit/training/test_transforms.py)."""
    noise = {"name": "GaussNoise", "p": 0.2, "std_range": [0.01, 0.03]}
    with pytest.raises(ConfigError, match=r"train.augment_backend 'device'.*train.augment.extra \(GaussNoise\)"):
        parse_settings({"train": {"augment": {"extra": [noise]}, "augment_backend": "device"}}, "params.yaml")
    with pytest.raises(ConfigError, match=r"train.augment.extra\[0\]: .*needs name"):
        parse_settings({"train": {"augment": {"extra": [{"p": 0.5}]}}}, "params.yaml")
    assert parse_settings({"train": {"augment": {"extra": [noise]}}}).train.augment.extra == [noise]
