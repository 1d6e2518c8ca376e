"""The servable pyfunc model: probabilities in the checkpoint's class order, every input form, the calibration
temperature, named errors, pinned requirements, and loading in a fresh process."""

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
from conftest import REPO
from serving_support import (
    CLASSES,
    big_png,
    make_checkpoint,
    make_images,
    store_fixture,  # noqa: F401 - the fixture store (one logged pyfunc model, temperature 2)
)

from cxr.model.preprocess import decode, to_input


def reference_logits(checkpoint: Path, images: list[np.ndarray]) -> np.ndarray:
    """Logits computed by hand from the project's decode and to_input: what the pyfunc must reproduce."""
    from cxr.model.inference import load_trained

    model, meta = load_trained(checkpoint)
    x = torch.from_numpy(np.stack([decode(im, meta["image_size"]) for im in images])).unsqueeze(1)
    with torch.no_grad():
        return model(to_input(x, "cpu")).numpy().astype(np.float64)


def test_probabilities_sum_to_one_in_the_checkpoint_class_order(store) -> None:
    paths = store["images"]
    out = store["model"].predict(pd.DataFrame({"image": [p.read_bytes() for p in paths]}))
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


def test_bytes_base64_and_arrays_give_the_same_answer(store) -> None:
    from cxr.serving.pyfunc import to_frame

    path = store["images"][2]
    raw = path.read_bytes()
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    inputs = [
        raw,
        bytearray(raw),
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
    # The same pixels reach the network: bytes, base64 and RGB identical; gray within rounding.
    clf = store["model"].unwrap_python_model()
    pixels = clf.preprocess(to_frame(inputs)).astype(int)
    for i in range(1, len(inputs)):
        assert np.abs(pixels[i] - pixels[0]).max() <= (1 if i == len(inputs) - 1 else 0), f"input {i} differs"
    # BGR given as if it were RGB swaps red and blue: other pixels (the channel order is honoured).
    assert np.abs(clf.preprocess([bgr]).astype(int) - pixels[0]).max() > 10
    # A mapping {"image": [...]} works through pyfunc too (what the scoring server makes of JSON "inputs").
    for listed in ({"image": [raw, raw]}, {"image": [raw, base64.b64encode(raw).decode()]}):
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
    paths = [p.read_bytes() for p in store["images"]]
    p1 = raw.predict(None, pd.DataFrame({"image": paths})).drop(columns="label").to_numpy()
    p2 = store["model"].predict(pd.DataFrame({"image": paths})).drop(columns="label").to_numpy()
    assert store["model"].unwrap_python_model().temperature == 2.0
    logits = np.log(p1)
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p2, expected, atol=1e-6)
    assert np.abs(p2 - p1).max() > 1e-3  # a temperature of 2 flattens the distribution
    assert (p2.max(axis=1) <= p1.max(axis=1) + 1e-9).all()


ISOTONIC = {"x": [0.0, 0.3, 0.6, 1.0], "y": [0.05, 0.2, 0.7, 0.95]}


@pytest.mark.parametrize(
    "record",
    [
        {"method": "vector", "temperature": 1.0, "vector": {"scale": [0.5, 1.5, 1.0], "bias": [0.4, -0.2, 0.0]}},
        {"method": "isotonic", "temperature": 1.0, "isotonic": [ISOTONIC] * 3},
        {"method": "none", "temperature": 1.0},
    ],
    ids=lambda r: r["method"],
)
def test_the_calibration_evaluation_chose_travels_inside_the_logged_model(store, tmp_path: Path, record) -> None:
    """Whichever map the evaluate step wrote to calibration.json, the logged model applies it to its logits; the
    file is copied at logging, so a later evaluation does not change a registered version."""
    import mlflow

    from cxr.model.calibrate import Calibrator
    from cxr.serving.pyfunc import log_pyfunc

    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({**record, "positive_class": "COVID", "threshold": 0.5}))
    mlflow.set_tracking_uri(store["uri"])
    with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("t").experiment_id):
        info = log_pyfunc(store["checkpoint"], calibration)
    calibration.write_text(json.dumps({"temperature": 9.0}))
    model = mlflow.pyfunc.load_model(info.model_uri)
    images = [p.read_bytes() for p in store["images"]]
    probs = model.predict(pd.DataFrame({"image": images})).drop(columns="label").to_numpy()
    expected = Calibrator.from_record(record).probabilities(reference_logits(store["checkpoint"], images))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert model.unwrap_python_model().calibrator.method == record["method"]


def test_a_calibration_file_that_cannot_be_applied_is_refused_when_logged(store, tmp_path: Path) -> None:
    from cxr.serving.pyfunc import log_pyfunc

    calibration = tmp_path / "calibration.json"
    calibration.write_text(json.dumps({"method": "vector", "vector": {"scale": [1.0], "bias": []}}))
    with pytest.raises(ValueError, match="vector.bias"):
        log_pyfunc(store["checkpoint"], calibration)


def test_batches_give_the_same_answer_as_one_pass(store) -> None:
    clf = store["model"].unwrap_python_model()
    images = clf.preprocess([p.read_bytes() for p in store["images"]])
    whole = clf.logits(images)
    old = clf.batch_size
    try:
        clf.batch_size = 3
        batched = clf.logits(images)
    finally:
        clf.batch_size = old
    np.testing.assert_allclose(batched, whole, atol=1e-4)


def test_bad_inputs_are_named(store) -> None:
    model = store["model"]
    with pytest.raises(ValueError, match=r"image\[1\]: cannot be decoded"):
        model.predict(pd.DataFrame({"image": [store["images"][0].read_bytes(), b"not an image at all"]}))
    with pytest.raises(ValueError, match=r"image\[0\]: cannot be decoded"):  # base64 of something else
        model.predict(pd.DataFrame({"image": ["notAFileNorAnImage"]}))
    with pytest.raises(ValueError, match=r"image\[0\]: not base64-encoded image data"):
        model.predict(pd.DataFrame({"image": ["no base64: spaces, dots."]}))
    with pytest.raises(ValueError, match=r"image\[0\]: an image array must be H x W"):
        model.unwrap_python_model().predict(None, [np.zeros((2, 3, 4, 5), np.uint8)])
    with pytest.raises(ValueError, match=r"image\[0\]: cannot be decoded"):
        model.predict(pd.DataFrame({"image": [store["images"][0].read_bytes()[:60]]}))


def test_an_image_above_the_pixel_limit_is_refused_by_position(store) -> None:
    """The limit travels in the model's config (download.max_pixels, 25 million by default) and is read from the
    image's header, before decoding; the error names the image and both numbers."""
    from mlflow.pyfunc import PythonModelContext

    from cxr.serving.pyfunc import CxrClassifier

    assert store["model"].model_config["max_pixels"] == 25_000_000
    good, big = store["images"][0].read_bytes(), big_png(5001, 5000)
    too_large = r"image\[1\]: too large \(5001x5000 = 25,005,000 pixels, above the limit of 25,000,000\); not decoded"
    for request in ([good, big], [good, base64.b64encode(big).decode("ascii")]):
        with pytest.raises(ValueError, match=too_large):
            store["model"].predict(pd.DataFrame({"image": request}))
    clf = CxrClassifier()
    config = {"max_pixels": 64 * 64}
    clf.load_context(PythonModelContext(artifacts={"checkpoint": str(store["checkpoint"])}, model_config=config))
    assert len(clf.predict(None, [big_png(64, 64), np.zeros((64, 64), np.uint8)])) == 2
    for image in (big_png(65, 64), np.zeros((64, 65), np.uint8)):
        with pytest.raises(
            ValueError, match=r"image\[0\]: too large \(65x64 = 4,160 pixels, above the limit of 4,096\)"
        ):
            clf.predict(None, [image])


def test_the_served_model_reads_no_files(store, tmp_path: Path) -> None:
    """A path in a request is not opened: a file that exists and one that does not get the same answer."""
    present = store["images"][0]
    absent = tmp_path / "img9.png"
    clf = store["model"].unwrap_python_model()
    messages = set()
    for request in ([str(present)], [str(absent)], [present], [absent]):
        with pytest.raises(ValueError) as err:
            store["model"].predict(pd.DataFrame({"image": request}))
        messages.add(str(err.value).replace(str(request[0]), "<path>"))
        with pytest.raises(ValueError, match="reads no files"):
            clf.predict(None, request)
    assert len(messages) == 1, messages
    assert "this server reads no files" in messages.pop()


def test_paths_are_read_only_inside_the_configured_folder(store, tmp_path: Path, monkeypatch) -> None:
    """With CXR_SERVE_IMAGE_ROOT set, a file in that folder is read; nothing else is, and every refusal reads alike."""
    from mlflow.pyfunc import PythonModelContext

    from cxr.serving.pyfunc import CxrClassifier

    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    inside = folder / "sub" / "x.png"
    inside.write_bytes(store["images"][1].read_bytes())
    outside = tmp_path / "outside.png"
    outside.write_bytes(store["images"][2].read_bytes())
    (folder / "link.png").symlink_to(outside)  # in the folder, pointing out of it
    (folder / "out").symlink_to(tmp_path)
    (folder / "dir.png").mkdir()
    monkeypatch.setenv("CXR_SERVE_IMAGE_ROOT", str(folder))
    clf = CxrClassifier()
    clf.load_context(PythonModelContext(artifacts={"checkpoint": str(store["checkpoint"])}, model_config={}))
    expected = clf.predict(None, [inside.read_bytes()]).drop(columns="label").to_numpy()
    for name in (str(inside), "sub/x.png", inside, f"{folder}/sub/../sub/x.png"):
        np.testing.assert_allclose(clf.predict(None, [name]).drop(columns="label").to_numpy(), expected, atol=1e-9)
    refused = [
        str(outside),  # exists, outside
        str(tmp_path / "nothing.png"),  # does not exist, outside
        str(folder / "nothing.png"),  # does not exist, inside
        str(folder / "link.png"),
        str(folder / "out" / "outside.png"),
        str(folder / "sub" / ".." / ".." / "outside.png"),
        "../outside.png",
        str(folder / "dir.png"),  # not a file
        outside,
    ]
    messages = set()
    for name in refused:
        with pytest.raises(ValueError) as err:
            clf.predict(None, [name])
        messages.add(str(err.value).replace(str(name), "<path>"))
    assert len(messages) == 1, messages
    assert "nor an image file in the folder this server reads from" in messages.pop()
    monkeypatch.setenv("CXR_SERVE_IMAGE_ROOT", str(inside))
    with pytest.raises(ValueError, match="CXR_SERVE_IMAGE_ROOT=.*not a folder"):
        clf.load_context(PythonModelContext(artifacts={"checkpoint": str(store["checkpoint"])}, model_config={}))


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
        f"print(m.predict(pd.DataFrame({{'image': [open({str(image)!r}, 'rb').read()]}})).to_json(orient='records'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=store["root"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])[0]
    here = store["model"].predict(pd.DataFrame({"image": [image.read_bytes()]})).iloc[0]
    assert got["label"] == here["label"]
    for c in CLASSES:
        assert got[f"p_{c}"] == pytest.approx(here[f"p_{c}"], abs=1e-6)


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
        f"out = clf.predict(ctx, pd.DataFrame({{'image': [open({str(image)!r}, 'rb').read()]}}))\n"
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
