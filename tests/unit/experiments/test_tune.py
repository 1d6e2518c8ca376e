"""The search space's plumbing: suggestions within ranges, values applied to the train section, the params file."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

from cxr.core.search import Range
from cxr.core.sections import Train
from cxr.experiments.tune import TuneResult, apply, direction, nested, suggest


def test_suggestions_stay_in_their_ranges_and_apply_to_train() -> None:
    space = {
        "train.lr": Range(low=1e-4, high=1e-2, log=True),
        "train.epochs": Range(low=2, high=4, integer=True),
        "train.batch_size": Range(choices=[8, 16]),
        "train.augment.rotate_deg": Range(low=0, high=20),
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        values = suggest(trial, space)
        assert 1e-4 <= values["train.lr"] <= 1e-2 and isinstance(values["train.epochs"], int)
        cfg = apply(Train(), values)
        assert cfg.lr == values["train.lr"] and cfg.batch_size in (8, 16)
        assert cfg.augment.rotate_deg == values["train.augment.rotate_deg"]
        study.tell(trial, 0.0)


def test_apply_validates_like_params() -> None:
    with pytest.raises(ValidationError):
        apply(Train(), {"train.batch_size": 0})


def test_best_params_as_file_and_dvc_arguments(tmp_path) -> None:
    res = TuneResult("s", 0.5, {"train.lr": 0.003, "train.augment.p": 0.5}, 2, 0, tmp_path / "b.yaml", "r")
    assert nested(res.best_params) == {"train": {"lr": 0.003, "augment": {"p": 0.5}}}
    assert res.dvc_args() == ["-S", "train.lr=0.003", "-S", "train.augment.p=0.5"]
    assert direction("val_loss") == "minimize" and direction("val_accuracy") == "maximize"
