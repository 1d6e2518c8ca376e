"""The servable pyfunc model, batch prediction, and registration with lineage and a model card."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, tiny_params

from cxr.core.config import parse_settings
from cxr.model.networks import build_model
from cxr.model.preprocess import decode, to_input

#: Deliberately not the params order, so a model that ignored the checkpoint's class order would be caught.
CLASSES = ["Normal", "COVID", "Viral Pneumonia"]
SIZE = 48


def make_checkpoint(path: Path, classes=CLASSES, size: int = SIZE, seed: int = 0) -> Path:
    """A random-weight checkpoint in the format cxr.train saves."""
    torch.manual_seed(seed)
    model = build_model("resnet18", len(classes), None)
    # Random heads give near-uniform outputs; scale the head so classes differ clearly.
    with torch.no_grad():
        model.fc.weight.mul_(5.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model": model.state_dict(),
            "arch": "resnet18",
            "classes": list(classes),
            "image_size": size,
            "params": {},
            "epoch": 0,
            "val": {"val_accuracy": 0.5},
        },
        path,
    )
    return path


def make_images(folder: Path, n: int = 4, seed: int = 1) -> list[Path]:
    """Colour PNGs of different sizes (so decoding, gray conversion and resizing all take part)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = 40 + 17 * i, 64 + 5 * i
        yy, xx = np.mgrid[0:h, 0:w]
        bgr = np.stack([(xx * (3 + i)) % 256, (yy * (5 + i)) % 256, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), bgr)
        paths.append(path)
    return paths


def reference_logits(checkpoint: Path, images: list[np.ndarray]) -> np.ndarray:
    """Logits computed by hand from the project's decode and to_input: what the pyfunc must reproduce."""
    from cxr.model.inference import load_trained

    model, meta = load_trained(checkpoint)
    x = torch.from_numpy(np.stack([decode(im, meta["image_size"]) for im in images])).unsqueeze(1)
    with torch.no_grad():
        return model(to_input(x, "cpu")).numpy().astype(np.float64)


@pytest.fixture(scope="module")
def store(module_tmp: Path) -> dict:
    """One pyfunc model (temperature 2) logged into a throw-away sqlite store."""
    import mlflow

    from cxr.serving.pyfunc import log_pyfunc

    root = module_tmp
    checkpoint = make_checkpoint(root / "best.pt")
    calibration = root / "calibration.json"
    calibration.write_text(json.dumps({"temperature": 2.0, "positive_class": "COVID", "threshold": 0.5}))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=exp):
        info = log_pyfunc(checkpoint, calibration)
    model = mlflow.pyfunc.load_model(info.model_uri)
    return {
        "root": root,
        "checkpoint": checkpoint,
        "uri": uri,
        "model_uri": info.model_uri,
        "model": model,
        "images": make_images(root / "images"),
    }


def test_probabilities_sum_to_one_in_the_checkpoint_class_order(store) -> None:
    paths = store["images"]
    out = store["model"].predict(pd.DataFrame({"image": [str(p) for p in paths]}))
    assert list(out.columns) == ["p_Normal", "p_COVID", "p_Viral Pneumonia", "label"]
    probs = out[["p_Normal", "p_COVID", "p_Viral Pneumonia"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (probs > 0).all()
    # Each column is the probability of the class the checkpoint puts at that index.
    logits = reference_logits(store["checkpoint"], [p.read_bytes() for p in paths])
    expected = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert list(out["label"]) == [CLASSES[i] for i in logits.argmax(axis=1)]
    assert len(set(out["label"])) > 1 or np.ptp(probs, axis=0).max() > 1e-3  # the images are told apart


def test_path_bytes_base64_and_arrays_give_the_same_answer(store) -> None:
    from cxr.serving.pyfunc import to_frame

    path = store["images"][2]
    raw = path.read_bytes()
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    inputs = [
        str(path),
        raw,
        base64.b64encode(raw).decode(),
        base64.encodebytes(raw).decode(),
        "data:image/png;base64," + base64.b64encode(raw).decode(),
        rgb,
        gray,
    ]
    out = store["model"].predict(to_frame(inputs))
    probs = out.drop(columns="label").to_numpy()
    for i in range(1, len(inputs)):
        np.testing.assert_allclose(probs[i], probs[0], atol=2e-3, err_msg=f"input {i} differs")
    # The same pixels reach the network: path, bytes, base64 and RGB identical; gray within rounding.
    clf = store["model"].unwrap_python_model()
    pixels = clf.preprocess(to_frame(inputs)).astype(int)
    for i in range(1, len(inputs)):
        assert np.abs(pixels[i] - pixels[0]).max() <= (1 if i == len(inputs) - 1 else 0), f"input {i} differs"
    # BGR given as if it were RGB swaps red and blue: other pixels (the channel order is honoured).
    assert np.abs(clf.preprocess([bgr]).astype(int) - pixels[0]).max() > 10
    # A mapping {"image": [...]} works through pyfunc too (what the scoring server makes of JSON "inputs").
    for listed in ({"image": [str(path), raw]}, {"image": [str(path), base64.b64encode(raw).decode()]}):
        np.testing.assert_allclose(
            store["model"].predict(listed).drop(columns="label").to_numpy(), probs[:2], atol=1e-9
        )


def test_calibration_temperature_is_applied(store) -> None:
    """The logged model (T=2) equals softmax(logits / 2) of the uncalibrated model (T=1)."""
    from mlflow.pyfunc import PythonModelContext

    from cxr.serving.pyfunc import CxrClassifier

    raw = CxrClassifier()
    raw.load_context(PythonModelContext(artifacts={"checkpoint": str(store["checkpoint"])}, model_config={}))
    assert raw.temperature == 1.0
    paths = [str(p) for p in store["images"]]
    p1 = raw.predict(None, pd.DataFrame({"image": paths})).drop(columns="label").to_numpy()
    p2 = store["model"].predict(pd.DataFrame({"image": paths})).drop(columns="label").to_numpy()
    assert store["model"].unwrap_python_model().temperature == 2.0
    logits = np.log(p1)
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p2, expected, atol=1e-6)
    assert np.abs(p2 - p1).max() > 1e-3  # a temperature of 2 flattens the distribution
    assert (p2.max(axis=1) <= p1.max(axis=1) + 1e-9).all()


def test_batches_give_the_same_answer_as_one_pass(store) -> None:
    clf = store["model"].unwrap_python_model()
    images = clf.preprocess([str(p) for p in store["images"]])
    whole = clf.logits(images)
    old = clf.batch_size
    try:
        clf.batch_size = 3
        batched = clf.logits(images)
    finally:
        clf.batch_size = old
    np.testing.assert_allclose(batched, whole, atol=1e-4)


def test_bad_inputs_are_named(store, tmp_path: Path) -> None:
    model = store["model"]
    with pytest.raises(ValueError, match=r"image\[1\]: cannot be decoded"):
        model.predict(pd.DataFrame({"image": [str(store["images"][0]), b"not an image at all"]}))
    with pytest.raises(ValueError, match="missing.png.*neither an existing file nor base64"):
        model.predict(pd.DataFrame({"image": [str(tmp_path / "missing.png")]}))
    with pytest.raises(ValueError, match=r"image\[0\]: 'notAFileNorAnImage' is neither.*not to a PNG"):
        model.predict(pd.DataFrame({"image": ["notAFileNorAnImage"]}))
    with pytest.raises(ValueError, match=r"image\[0\]: an image array must be H x W"):
        model.unwrap_python_model().predict(None, [np.zeros((2, 3, 4, 5), np.uint8)])
    broken = tmp_path / "broken.png"
    broken.write_bytes(store["images"][0].read_bytes()[:60])
    with pytest.raises(ValueError, match="broken.png: cannot be decoded"):
        model.predict(pd.DataFrame({"image": [str(broken)]}))


def test_read_temperature_rejects_bad_files(tmp_path: Path) -> None:
    from cxr.model.inference import read_temperature

    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"threshold": 0.3}))
    with pytest.raises(ValueError, match="calibration.json: 'temperature'"):
        read_temperature(path)
    path.write_text(json.dumps({"temperature": -1}))
    with pytest.raises(ValueError, match="positive"):
        read_temperature(path)
    path.write_text(json.dumps({"temperature": 1.5}))
    assert read_temperature(path) == 1.5
    with pytest.raises(FileNotFoundError, match="evaluate"):
        read_temperature(tmp_path / "nope.json")


def test_pins_strip_local_version_suffixes(monkeypatch, store) -> None:
    import importlib.metadata

    import mlflow

    from cxr.serving import pyfunc as serving

    monkeypatch.setattr(importlib.metadata, "version", lambda name: {"torch": "2.14.1+cu130"}.get(name, "1.0"))
    assert serving.pinned_requirements(("torch", "numpy")) == ["torch==2.14.1", "numpy==1.0"]
    monkeypatch.undo()
    mlflow.set_tracking_uri(store["uri"])
    local = Path(mlflow.artifacts.download_artifacts(store["model_uri"], dst_path=str(store["root"] / "dl")))
    reqs = (local / "requirements.txt").read_text().split()
    names = {r.split("==")[0] for r in reqs}
    assert {"torch", "torchvision", "numpy", "opencv-python-headless", "pandas", "mlflow"} <= names
    assert all("==" in r and "+" not in r for r in reqs)
    assert f"torch=={torch.__version__.split('+')[0]}" in reqs
    assert (local / "code" / "cxr" / "serving" / "pyfunc.py").is_file()


@pytest.mark.slow
def test_loads_in_a_fresh_process(store) -> None:
    """The logged model works without this process's imports: the code travels with it."""
    image = store["images"][0]
    code = (
        "import sys, mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({store['uri']!r})\n"
        f"m = mlflow.pyfunc.load_model({store['model_uri']!r})\n"
        f"print(m.predict(pd.DataFrame({{'image': [{str(image)!r}]}})).to_json(orient='records'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=store["root"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])[0]
    here = store["model"].predict(pd.DataFrame({"image": [str(image)]})).iloc[0]
    assert got["label"] == here["label"]
    for c in CLASSES:
        assert got[f"p_{c}"] == pytest.approx(here[f"p_{c}"], abs=1e-6)


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
    direct = store["model"].predict(pd.DataFrame({"image": [str(p) for p in nested]}))
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
    direct = store["model"].predict(pd.DataFrame({"image": [str(p) for p in good]}))
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


# ---- registration: lineage, model card, and an untouched registry on failure ----


def fake_project(root: Path) -> tuple:
    """The files the register step reads, without running the pipeline."""
    settings = parse_settings(tiny_params(base={"classes": CLASSES}, evaluate={"positive_class": "COVID"}))
    paths = settings.paths(root)
    (root / "params.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "data.dvc").write_text(yaml.safe_dump({"outs": [{"path": "data/raw", "md5": "abc123.dir"}]}))
    make_checkpoint(paths.best_checkpoint)
    paths.eval_reports.mkdir(parents=True)
    (paths.eval_reports / "calibration.json").write_text(json.dumps({"temperature": 1.5}))
    metrics = {
        "n": 16,
        "classes": CLASSES,
        "accuracy": 0.75,
        "accuracy_ci_low": 0.5,
        "accuracy_ci_high": 0.9,
        "macro_auc": 0.8,
        "macro_auc_ci_low": 0.6,
        "macro_auc_ci_high": 0.95,
        "per_class": {
            c: {"support": 5, "sensitivity": 0.6, "sensitivity_ci_low": 0.2, "sensitivity_ci_high": 1.0}
            for c in CLASSES
        },
        "binary": {
            "positive": "COVID",
            "threshold": 0.4,
            "sensitivity": 0.8,
            "sensitivity_ci_low": 0.4,
            "sensitivity_ci_high": 1.0,
        },
        "calibration": {"temperature": 1.5, "ece": 0.05, "ece_uncalibrated": 0.2, "brier": 0.3},
        "bootstrap": {"ci": 0.95},
    }
    paths.metrics_full.write_text(json.dumps(metrics))
    paths.gradcam_reports.mkdir(parents=True)
    (paths.gradcam_reports / "metrics.json").write_text(json.dumps({"lung_energy": 0.61, "lung_area_fraction": 0.3}))
    return settings, paths


def test_register_logs_the_pyfunc_with_lineage_and_a_model_card(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from cxr.registry import register as reg

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings, paths = fake_project(tmp_path / "p")
    client = mlflow.MlflowClient(uri)

    # A failure half-way (after the run started, before the model is in place) leaves the registry untouched.
    def boom(*args, **kwargs):
        raise RuntimeError("artifact store went away")

    monkeypatch.setattr("cxr.serving.pyfunc.log_pyfunc", boom)
    with pytest.raises(RuntimeError, match="went away"):
        reg.register(settings, paths)
    assert client.search_registered_models() == []
    failed = client.search_runs([client.get_experiment_by_name(settings.base.experiment).experiment_id])
    assert [r.info.status for r in failed] == ["FAILED"]
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    # A failing version creation removes the registered model it had to create.
    def no_version(*args, **kwargs):
        raise RuntimeError("registry refused the version")

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", no_version)
    with pytest.raises(RuntimeError, match="refused"):
        reg.register(settings, paths)
    assert client.search_registered_models() == []
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    result = reg.register(settings, paths)
    version = client.get_model_version(result.model_name, result.version)
    tags = version.tags
    assert tags["data_version"] == "abc123.dir"
    assert tags["mlflow_run_id"] == result.run_id == version.run_id
    assert tags["params_hash"] == settings.fingerprint() and len(tags["dvc_lock_sha256"]) == 64
    assert "git_commit" in tags
    assert float(tags["test.accuracy"]) == 0.75 and float(tags["test.accuracy_ci_low"]) == 0.5
    assert float(tags["test.macro_auc_ci_high"]) == 0.95
    assert float(tags["test.COVID.sensitivity"]) == 0.6 and float(tags["test.COVID.at_threshold.sensitivity"]) == 0.8
    card = version.description
    for needle in (
        "Intended use",
        "abc123.dir",
        "Normal, COVID, Viral Pneumonia",
        "0.7500 [0.5000, 0.9000]",
        "T = 1.5000",
        "0.6100",
        "Source-archive shortcut",
        "Near duplicates",
        "No patient identifiers",
    ):
        assert needle in card, needle
    local = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="model_card.md", dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    assert Path(local).read_text() == card
    # The report logged to the run names the run and the version, which the report stage cannot know.
    page = mlflow.artifacts.download_artifacts(
        run_id=result.run_id, artifact_path="pipeline/report.html", dst_path=str(tmp_path / "dl"), tracking_uri=uri
    )
    page = Path(page).read_text()
    assert f"<code>{result.run_id}</code>" in page and f"{result.model_name} version {result.version}" in page
    assert client.get_run(result.run_id).data.metrics["data/skipped_files"] == 0
    model = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.version}")
    assert model.unwrap_python_model().temperature == 1.5
    out = model.predict(pd.DataFrame({"image": [np.full((30, 30), 128, np.uint8)]}))
    assert list(out.columns) == ["p_Normal", "p_COVID", "p_Viral Pneumonia", "label"]


def test_version_description_is_cut_to_the_registry_limit() -> None:
    from cxr.reporting.modelcard import version_description

    card = "\n".join(f"line {i}" for i in range(2000))
    text = version_description(card, "run123", limit=500)
    assert len(text) <= 500 and "run123" in text and text.startswith("line 0\n")
    assert version_description("short", "r") == "short"


def test_register_twice_with_the_same_inputs_registers_once(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from cxr.core.config import parse_settings
    from cxr.registry import register as reg

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    settings, paths = fake_project(tmp_path / "p")
    shutil.copytree(REPO / "cxr", paths.root / "cxr", ignore=shutil.ignore_patterns("__pycache__"))
    client = mlflow.MlflowClient(uri)

    first = reg.register(settings, paths)
    again = reg.register(settings, paths)
    assert first.new and not again.new
    assert again.version == first.version and again.run_id != first.run_id
    assert len(client.search_model_versions(f"name='{settings.base.model_name}'")) == 1
    unchanged = client.get_run(again.run_id).data.tags
    assert unchanged["registration"] == "unchanged" and unchanged["same_as_version"] == first.version

    # A gate rule or the log level is not a model input; the data, a train param or the code is.
    gate_only = parse_settings({**settings.model_dump(mode="json"), "registry": {"min_accuracy": 0.1}})
    assert not reg.register(gate_only, paths).new
    forced = reg.register(settings, paths, force=True)
    assert forced.new and forced.version != first.version
    changed = parse_settings(
        {**settings.model_dump(mode="json"), "train": {**settings.train.model_dump(mode="json"), "lr": 0.01}}
    )
    assert reg.register(changed, paths).new
    (paths.root / "cxr" / "model" / "networks.py").write_text(
        (paths.root / "cxr" / "model" / "networks.py").read_text() + "\n# edited\n"
    )
    assert reg.register(settings, paths).new
    card = paths.root / "cxr" / "reporting" / "templates" / "model_card.md.j2"
    card.write_text(card.read_text() + "\nEdited.\n")
    assert reg.register(settings, paths).new  # a template shapes the registered card: it is code too
    data = yaml.safe_load((paths.root / "data.dvc").read_text())
    data["outs"][0]["md5"] = "def456.dir"
    (paths.root / "data.dvc").write_text(yaml.safe_dump(data))
    assert reg.register(settings, paths).new


def test_artifacts_go_beside_the_store_not_into_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    """With no MLFLOW_TRACKING_URI: mlflow.db and mlartifacts/ in the project, as the README says; nothing in cwd."""
    import mlflow

    from cxr.registry import register as reg

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings, paths = fake_project(tmp_path / "p")
    try:
        result = reg.register(settings, paths)
    finally:
        mlflow.set_tracking_uri(None)
    project = (tmp_path / "p").resolve()
    assert result.tracking_uri == f"sqlite:///{project / 'mlflow.db'}"
    assert list((project / "mlartifacts").rglob("MLmodel")), "the model is not under mlartifacts/"
    assert not (project / "mlruns").exists() and list(elsewhere.iterdir()) == []
    readme = (REPO / "README.md").read_text()
    assert "`mlflow.db`, `mlartifacts/`" in readme


def test_artifact_location_follows_the_tracking_uri(tmp_path: Path) -> None:
    from cxr.ops.tracking import artifact_location

    assert artifact_location(f"sqlite:///{tmp_path / 'store' / 'x.db'}", tmp_path / "p") == (
        (tmp_path / "store" / "mlartifacts").as_uri()
    )
    assert artifact_location("postgresql://u@db/mlflow", tmp_path / "p") == (tmp_path / "p" / "mlartifacts").as_uri()
    assert artifact_location("http://127.0.0.1:5000", tmp_path) is None  # the server's --artifacts-destination


def test_the_served_model_imports_no_training_code(tmp_path: Path) -> None:
    """Loading the served model and predicting runs through cxr.serving and cxr.model only."""
    ckpt = make_checkpoint(tmp_path / "best.pt")
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.full((40, 40), 128, np.uint8))
    code = (
        "import sys, types\n"
        "import pandas as pd\n"
        "from cxr.serving.pyfunc import CxrClassifier\n"
        "clf = CxrClassifier()\n"
        f"ctx = types.SimpleNamespace(artifacts={{'checkpoint': {str(ckpt)!r}}}, model_config={{}})\n"
        "clf.load_context(ctx)\n"
        f"out = clf.predict(ctx, pd.DataFrame({{'image': [{str(image)!r}]}}))\n"
        "assert len(out) == 1\n"
        "print(sorted(m for m in sys.modules if m.startswith('cxr.')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    loaded = set(eval(proc.stdout))  # noqa: S307 - the list our own subprocess printed
    # The serving and model packages, and the import-free list of architectures: no params (pydantic), no
    # training, evaluation, registry or tracking code.
    allowed = {"cxr", "cxr.core", "cxr.core.archs", "cxr.serving", "cxr.model"}
    assert {m for m in loaded if m not in allowed and not m.startswith(("cxr.serving.", "cxr.model."))} == set()
    assert {"cxr.model.inference", "cxr.model.preprocess", "cxr.model.networks"} <= loaded


def test_a_version_registered_before_the_layout_still_loads_and_predicts(tmp_path: Path) -> None:
    """tests/fixtures/pyfunc-v0 pickles ``cxr.serving.CxrClassifier`` (the class's path before the package was laid
    out by job): MLflow loads it in a fresh process and it predicts what today's code computes by hand."""
    model_dir = tmp_path / "model"
    shutil.copytree(REPO / "tests" / "fixtures" / "pyfunc-v0", model_dir)
    ckpt = make_checkpoint(model_dir / "artifacts" / "best.pt")
    files = make_images(tmp_path / "img", n=3)
    request = [base64.b64encode(f.read_bytes()).decode("ascii") for f in files]
    code = (
        "import json, sys, mlflow, pandas as pd\n"
        f"m = mlflow.pyfunc.load_model({str(model_dir)!r})\n"
        f"out = m.predict(pd.DataFrame({{'image': {request!r}}}))\n"
        "py = m.unwrap_python_model()\n"
        "print(json.dumps({'cls': type(py).__module__ + '.' + type(py).__name__, 'label': list(out['label']),\n"
        "                  'p': out[[c for c in out.columns if c.startswith('p_')]].values.tolist()}))\n"
    )
    # Run outside the checkout, so `cxr` is the installed package, as for `mlflow models serve`.
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cls"] == "cxr.serving.pyfunc.CxrClassifier"
    logits = reference_logits(ckpt, [f.read_bytes() for f in files])
    expected = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum(1, keepdims=True)  # calibration.json: T = 2
    assert np.allclose(out["p"], expected, atol=1e-5)
    assert out["label"] == [CLASSES[i] for i in expected.argmax(1)]
