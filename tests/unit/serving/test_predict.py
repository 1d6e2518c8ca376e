"""Batch prediction with the logged pyfunc model: CSV and JSON out, Grad-CAM overlays, bad files reported."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from serving_support import (
    CLASSES,
    big_png,
    make_images,
    store_fixture,  # noqa: F401 - the fixture store (one logged pyfunc model, temperature 2)
)


def test_predict_writes_csv_and_json_with_gradcam(store, tmp_path: Path) -> None:
    from cxr.serving.predict import predict

    folder = tmp_path / "in"
    nested = make_images(folder / "sub", n=2, seed=5)
    (folder / "notes.txt").write_text("not an image")
    single = store["images"][0]
    result = predict(
        store["model_uri"],
        [folder, single],
        tmp_path / "out" / "pred.csv",
        gradcam_dir=tmp_path / "cams",
        tracking_uri=store["uri"],
    )
    assert result.predicted == 3 and result.failed == {}
    table = pd.read_csv(result.out)
    assert list(table.columns) == ["path", "p_Normal", "p_COVID", "p_Viral Pneumonia", "label", "gradcam", "error"]
    assert table["error"].isna().all()
    assert list(table["path"]) == [str(p) for p in nested] + [str(single)]
    np.testing.assert_allclose(table.filter(like="p_").sum(axis=1), 1.0, atol=1e-6)
    direct = store["model"].predict(pd.DataFrame({"image": [p.read_bytes() for p in nested]}))
    np.testing.assert_allclose(
        table.filter(like="p_").to_numpy()[:2], direct.drop(columns="label").to_numpy(), atol=1e-6
    )
    cams = sorted((tmp_path / "cams").glob("*.png"))
    assert len(cams) == 3 and len({c.name for c in cams}) == 3  # img0 twice (folder and file): names stay unique
    # Each overlay is drawn at its file's own resolution (not the model's SIZE), plus a fixed frame
    # for the title and the colour bar.
    frames = set()
    for path, image in zip(table["gradcam"], table["path"], strict=True):
        overlay, source = cv2.imread(path), cv2.imread(image)
        assert overlay.std() > 0
        frames.add((overlay.shape[0] - source.shape[0], overlay.shape[1] - source.shape[1]))
    assert len(frames) == 1 and min(next(iter(frames))) > 0, frames
    assert (
        len({cv2.imread(p).shape for p in table["gradcam"]}) == len({cv2.imread(p).shape for p in table["path"]}) == 2
    )

    json_out = predict(store["model_uri"], [single], tmp_path / "pred.json", tracking_uri=store["uri"]).out
    rows = json.loads(json_out.read_text())
    assert rows[0]["path"] == str(single) and rows[0]["label"] in CLASSES and "gradcam" not in rows[0]
    assert rows[0]["p_COVID"] == pytest.approx(float(table["p_COVID"].iloc[-1]), abs=1e-6)


def test_predict_reports_a_bad_file_and_classifies_the_rest(store, tmp_path: Path, caplog) -> None:
    from cxr.serving.predict import predict

    folder = tmp_path / "in"
    good = make_images(folder, n=2)
    bad = folder / "img0_bad.jpg"  # sorts between the two good ones: rows keep the input order
    bad.write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "pred.csv"
    with caplog.at_level("WARNING", logger="cxr.serving.predict"):
        result = predict(store["model_uri"], [folder], out, gradcam_dir=tmp_path / "cams", tracking_uri=store["uri"])
    assert result.predicted == 2 and list(result.failed) == [str(bad)]
    table = pd.read_csv(out)
    assert list(table["path"]) == [str(good[0]), str(bad), str(good[1])]
    assert table["label"].isna().tolist() == [False, True, False]
    assert table.loc[1, ["p_Normal", "p_COVID", "p_Viral Pneumonia", "gradcam"]].isna().all()
    assert "img0_bad.jpg: cannot be decoded" in table.loc[1, "error"] and table["error"].isna().sum() == 2
    assert len(list((tmp_path / "cams").glob("*.png"))) == 2
    direct = store["model"].predict(pd.DataFrame({"image": [p.read_bytes() for p in good]}))
    np.testing.assert_allclose(
        table.filter(like="p_").to_numpy()[[0, 2]], direct.drop(columns="label").to_numpy(), atol=1e-6
    )
    assert any("img0_bad.jpg" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)

    # Nothing readable: an error, and nothing written.
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"none of the 1 images could be read .*x\.png"):
        predict(store["model_uri"], [only_bad], tmp_path / "none.csv", tracking_uri=store["uri"])
    assert not (tmp_path / "none.csv").exists()
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        predict(store["model_uri"], [folder], tmp_path / "pred.xlsx")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        predict(store["model_uri"], [tmp_path / "nowhere"], out)


def test_predict_refuses_an_image_above_the_pixel_limit(store, tmp_path: Path) -> None:
    """The model's limit (download.max_pixels when registered) holds for local files too, checked before decoding."""
    from cxr.serving.predict import predict

    folder = tmp_path / "in"
    make_images(folder, n=1)
    big = folder / "big.png"
    big.write_bytes(big_png(5001, 5000))
    result = predict(store["model_uri"], [folder], tmp_path / "pred.csv", tracking_uri=store["uri"])
    assert result.predicted == 1 and list(result.failed) == [str(big)]
    table = pd.read_csv(result.out)
    assert table["label"].isna().tolist() == [True, False]
    assert table.loc[0, "error"] == (
        f"{big}: too large (5001x5000 = 25,005,000 pixels, above the limit of 25,000,000); not decoded"
    )


def test_a_model_trained_on_synthetic_images_says_so_when_loaded_and_to_predict(store, tmp_path: Path, caplog) -> None:
    import logging

    import mlflow

    from cxr.serving.predict import predict
    from cxr.serving.pyfunc import SYNTHETIC_WARNING, log_pyfunc

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "cxr.serving.pyfunc"]

    mlflow.set_tracking_uri(store["uri"])
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("t").experiment_id):
        info = log_pyfunc(store["checkpoint"], None, data_source="synthetic")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxr.serving.pyfunc"):
        loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert loaded.metadata.metadata["data_source"] == "synthetic"
    assert warnings() == [SYNTHETIC_WARNING]  # the served model's log says it when it loads
    result = predict(info.model_uri, store["images"][:1], tmp_path / "p.csv", tracking_uri=store["uri"])
    assert result.warning == SYNTHETIC_WARNING and "synthetic images, not radiographs" in result.warning
    # A model that says nothing of its data (or was trained on real images) carries no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxr.serving.pyfunc"):
        plain = predict(store["model_uri"], store["images"][:1], tmp_path / "q.csv", tracking_uri=store["uri"])
    assert plain.warning is None and warnings() == []


def test_a_registered_version_from_before_the_model_carried_its_source_is_warned_by_its_tag(
    store, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from cxr.serving.predict import predict
    from cxr.serving.pyfunc import SYNTHETIC_WARNING

    client = MlflowClient(store["uri"])
    name = "legacy-synthetic"
    client.create_registered_model(name)
    mv = client.create_model_version(name, store["model_uri"], tags={"data_source": "synthetic"})
    client.set_registered_model_alias(name, "champion", mv.version)
    for uri in (f"models:/{name}@champion", f"models:/{name}/{mv.version}"):
        result = predict(uri, store["images"][:1], tmp_path / "p.csv", tracking_uri=store["uri"])
        assert result.warning == SYNTHETIC_WARNING, uri
