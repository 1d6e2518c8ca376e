"""The ``tune`` section of ``params.yaml``: the Optuna search space, each range checked against ``Train``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from cxr.core.sections import Section, Train


class Range(Section):
    """One searched hyperparameter: a float or int range (``low``, ``high``, ``log``) or a list of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[Any] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> Range:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or choices)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self

    def bounds(self) -> list[Any]:
        """The values a trial can reach at the edges (or every choice): each must be a valid setting."""
        if self.choices is not None:
            return list(self.choices)
        cast = int if self.integer else float
        return [cast(self.low), cast(self.high)]


class Tune(Section):
    """``cxr tune``: an Optuna search over training settings, scored on the validation split only."""

    trials: int = Field(20, ge=1)
    #: Stop starting new trials after this many seconds (null: no limit).
    timeout_s: float | None = Field(None, gt=0)
    #: Epochs per trial (null: train.epochs); short trials let the pruner drop bad settings early.
    epochs: int | None = Field(None, ge=1)
    #: The validation measure the study optimises (val_loss is minimised, the others maximised).
    objective: Literal["val_loss", "val_accuracy", "val_macro_f1"] = "val_loss"
    #: Median pruning on the per-epoch validation loss after this many complete trials and epochs.
    prune_after_trials: int = Field(3, ge=0)
    prune_after_epochs: int = Field(1, ge=0)
    #: Dotted ``train.*`` key -> its range or choices.
    space: dict[str, Range] = Field(
        default_factory=lambda: {
            "train.lr": Range(low=0.0003, high=0.01, log=True),
            "train.weight_decay": Range(low=0.00001, high=0.01, log=True),
            "train.label_smoothing": Range(low=0.0, high=0.1),
            "train.batch_size": Range(choices=[16, 32, 64]),
        }
    )

    @field_validator("space")
    @classmethod
    def _train_keys(cls, v: dict[str, Range]) -> dict[str, Range]:
        for key, rng in v.items():
            parts = key.split(".")
            if parts[0] != "train" or len(parts) < 2:
                raise ValueError(f"{key}: only train.* settings can be searched")
            for value in rng.bounds():
                data = Train().model_dump()
                node = data
                for part in parts[1:-1]:
                    if not isinstance(node.get(part), dict):
                        raise ValueError(f"{key}: unknown key")
                    node = node[part]
                if parts[-1] not in node:
                    raise ValueError(f"{key}: unknown key")
                node[parts[-1]] = value
                try:
                    Train.model_validate(data)
                except ValidationError as err:
                    raise ValueError(f"{key}={value!r} is not a valid setting: {err.errors()[0]['msg']}") from None
        return v
