"""Training with augmentation on the device: the same run whatever the loader's worker count."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import make_project, tiny_params

from cxr.core.config import load_settings

pytestmark = pytest.mark.slow


def test_device_augmentation_does_not_depend_on_the_workers(tmp_path: Path) -> None:
    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.training.loop import train

    # One data set and split for the three runs: each run is read back before the next one overwrites it.
    root = make_project(tmp_path / "project", tiny_params(train={"epochs": 2}))
    s = load_settings(root / "params.yaml")
    paths = s.paths(root)
    download(s.base, s.download, paths)
    split(s.base, s.split, paths)

    def _train(**changes) -> tuple[list[dict], dict]:
        train(s.train.model_copy(update=changes), s.base, paths, resume=False)
        with (root / "reports" / "train" / "history.csv").open() as fh:
            history = [{k: r[k] for k in ("train_loss", "val_loss", "val_accuracy")} for r in csv.DictReader(fh)]
        return history, torch.load(root / "models" / "best.pt", weights_only=True)["model"]

    h0, w0 = _train(augment_backend="device", num_workers=0)
    h1, w1 = _train(augment_backend="device", num_workers=1)
    assert h0 == h1
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # The loader path draws the same parameters; only bilinear rounding differs, so the runs stay close.
    hc, _ = _train(augment_backend="cpu", num_workers=0)
    assert abs(float(hc[0]["train_loss"]) - float(h0[0]["train_loss"])) < 0.05 * float(h0[0]["train_loss"])


def test_an_extra_step_trains_through_the_compose(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A step from train.augment.extra reaches the model (in a loader worker); the train step says which path ran."""
    import logging

    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.training.loop import train

    root = make_project(tmp_path / "project", tiny_params(train={"epochs": 1, "num_workers": 1}))
    s = load_settings(root / "params.yaml")
    paths = s.paths(root)
    download(s.base, s.download, paths)
    split(s.base, s.split, paths)

    def first_loss(**augment) -> tuple[float, list[str]]:
        caplog.clear()
        cfg = s.train.model_copy(update={"augment": s.train.augment.model_copy(update=augment)})
        with caplog.at_level(logging.INFO, logger="cxr.training.dataset"):
            train(cfg, s.base, paths, resume=False)
        with (root / "reports" / "train" / "history.csv").open() as fh:
            loss = float(next(csv.DictReader(fh))["train_loss"])
        said = [r.getMessage() for r in caplog.records if r.name == "cxr.training.dataset"]
        return loss, [m for m in said if m.startswith("augmentation:")]

    plain, said = first_loss()
    assert len(said) == 1 and "fast CPU path" in said[0]
    inverted, said = first_loss(extra=[{"name": "InvertImg", "p": 1.0}])
    assert len(said) == 1 and "Albumentations Compose" in said[0] and "InvertImg" in said[0]
    assert inverted != plain  # the model saw the inverted images


def test_lung_attention_trains_by_the_loader_and_the_device_path(tmp_path: Path, caplog) -> None:
    """The lung masks reach the loss by both paths (moved with their images), and the loss adds to the training
    loss; the finer output stride the lever pairs with trains and loads."""
    import logging

    from cxr.data.download import download
    from cxr.data.split import split
    from cxr.model.inference import load_trained
    from cxr.training.loop import train

    # 64 px at output stride 16: a 4 x 4 map, where lungs and the rest fall in different cells.
    params = tiny_params(train={"epochs": 1, "image_size": 64, "output_stride": 16, "num_workers": 0})
    root = make_project(tmp_path / "project", params)
    s = load_settings(root / "params.yaml")
    paths = s.paths(root)
    download(s.base, s.download, paths)
    split(s.base, s.split, paths)

    def first_loss(**changes) -> float:
        train(s.train.model_copy(update=changes), s.base, paths, resume=False)
        with (root / "reports" / "train" / "history.csv").open() as fh:
            return float(next(csv.DictReader(fh))["train_loss"])

    plain = first_loss()
    with caplog.at_level(logging.INFO, logger="cxr.training.dataset"):
        cpu = first_loss(lung_attention=5.0, augment_backend="cpu")
    said = [r.getMessage() for r in caplog.records if "lung attention" in r.getMessage()]
    assert said and "have a lung mask" in said[0] and "of" in said[0]
    device = first_loss(lung_attention=5.0, augment_backend="device")
    assert cpu > plain  # the attention term is part of the loss
    assert abs(device - cpu) < 0.05 * cpu  # the same masks, moved by the other warp
    model, meta = load_trained(paths.best_checkpoint)
    assert meta["params"]["lung_attention"] == 5.0 and model.layer4[0].conv1.stride == (1, 1)
