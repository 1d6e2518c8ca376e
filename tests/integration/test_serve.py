"""A registered version served by `mlflow models serve` as a real process, asked over HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import tiny_params
from serving_support import big_png

from cxr.core.config import parse_settings
from cxr.model.networks import build_model

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
CLASSES = ["COVID", "Normal", "Lung_Opacity", "Viral Pneumonia"]
SERVER_START_S = 240  # imports torch and loads the model; slow on a shared 2-core machine


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop the process group of ``proc`` (SIGTERM, then SIGKILL): the server's workers go with it."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def tail(log: Path, n: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.is_file() else "(no log)"


def post(url: str, payload: dict) -> tuple[int, dict]:
    """POST JSON; the status and the decoded answer (errors included)."""
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def registered_project(root: Path, tracking: str) -> tuple[str, str]:
    """Register a random-weight checkpoint through the register step (the pipeline's own path); (name, version)."""
    from cxr.registry.register import register

    settings = parse_settings(tiny_params())
    paths = settings.paths(root)
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES), None)
    with torch.no_grad():
        model.fc.weight.mul_(5.0)
    paths.model_dir.mkdir(parents=True)
    torch.save(
        {"model": model.state_dict(), "arch": "resnet18", "classes": CLASSES, "image_size": 48, "epoch": 0},
        paths.best_checkpoint,
    )
    paths.eval_reports.mkdir(parents=True)
    (paths.eval_reports / "calibration.json").write_text(json.dumps({"temperature": 1.7}))
    paths.metrics_full.write_text(
        json.dumps({"n": 16, "accuracy": 0.5, "accuracy_ci_low": 0.3, "accuracy_ci_high": 0.7})
    )
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    try:
        result = register(settings, paths)
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return result.model_name, result.version


@contextmanager
def serving(registry: dict, log: Path, env: dict[str, str]) -> Iterator[str]:
    """`mlflow models serve -m models:/<name>@champion --env-manager local` on a free 127.0.0.1 port: its URL."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "CXR_SERVE_IMAGE_ROOT"},
        "MLFLOW_TRACKING_URI": registry["tracking"],
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **env,
    }
    cmd = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        registry["uri"],
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=registry["root"], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{tail(log)}")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{url}/ping did not answer within {SERVER_START_S}s:\n{tail(log)}")
            time.sleep(1)
        yield url
    finally:
        stop(proc)
        assert proc.poll() is not None, "the server did not stop"


@pytest.fixture(scope="module")
def registry(module_tmp: Path) -> dict:
    """A registered version with the champion alias, in a sqlite store under the module's folder."""
    import mlflow

    root = module_tmp
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    name, version = registered_project(root / "project", tracking)
    mlflow.MlflowClient(tracking).set_registered_model_alias(name, "champion", version)
    return {"root": root, "tracking": tracking, "uri": f"models:/{name}@champion"}


@pytest.fixture(scope="module")
def server(registry: dict) -> Iterator[dict]:
    """The champion served as `make serve` serves it (no image folder set)."""
    import mlflow

    log = registry["root"] / "serve.log"
    with serving(registry, log, {}) as url:
        mlflow.set_tracking_uri(registry["tracking"])
        yield {"url": url, "model": mlflow.pyfunc.load_model(registry["uri"]), "root": registry["root"], "log": log}


@pytest.fixture(scope="module")
def rooted_server(registry: dict) -> Iterator[dict]:
    """The champion served with CXR_SERVE_IMAGE_ROOT naming a folder: requests may name files in it."""
    folder = registry["root"] / "incoming"
    folder.mkdir()
    log = registry["root"] / "serve-rooted.log"
    with serving(registry, log, {"CXR_SERVE_IMAGE_ROOT": str(folder)}) as url:
        yield {"url": url, "folder": folder, "root": registry["root"], "log": log}


def png_images(n: int = 3) -> list[bytes]:
    """Distinct encoded PNGs (gray and colour)."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        image = rng.integers(0, 256, (50 + 10 * i, 60, 3) if i % 2 else (70, 64), dtype=np.uint8)
        ok, buf = cv2.imencode(".png", image)
        assert ok
        out.append(buf.tobytes())
    return out


def test_served_model_answers_like_the_loaded_one(server) -> None:
    images = png_images()
    b64 = [base64.b64encode(b).decode("ascii") for b in images]
    expected = server["model"].predict(pd.DataFrame({"image": images}))

    status, body = post(
        server["url"] + "/invocations", {"dataframe_split": {"columns": ["image"], "data": [[s] for s in b64]}}
    )
    assert status == 200, body
    got = pd.DataFrame(body["predictions"])
    assert list(got.columns) == [f"p_{c}" for c in CLASSES] + ["label"]
    np.testing.assert_allclose(got.filter(like="p_").sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got.filter(like="p_").to_numpy(), expected.filter(like="p_").to_numpy(), atol=1e-5)
    assert list(got["label"]) == list(expected["label"])

    status, body = post(server["url"] + "/invocations", {"inputs": b64[:2]})
    assert status == 200, body
    assert [r["label"] for r in body["predictions"]] == list(expected["label"][:2])


def readme_curl() -> str:
    """The README's serving request: the ``curl ... /invocations`` command, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    match = re.search(r"^curl [^\n]*/invocations.*?(?<!\\)$", text, flags=re.M | re.S)
    assert match, "README.md shows no curl request to /invocations"
    return match.group(0).replace("\\\n", " ")


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("base64") is None, reason="needs curl and base64")
def test_the_readmes_request_is_answered(server, tmp_path: Path) -> None:
    """The README's curl command, copied literally (only the port differs), gets one prediction for new.png."""
    command = readme_curl()
    assert "127.0.0.1:5001" in command and "new.png" in command
    command = command.replace("127.0.0.1:5001", server["url"].removeprefix("http://"))
    image = png_images(1)[0]
    (tmp_path / "new.png").write_bytes(image)
    proc = subprocess.run(
        ["bash", "-c", command + " -w '\\n%{http_code}'"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    body, _, status = proc.stdout.rpartition("\n")
    assert status == "200", body
    predictions = json.loads(body)["predictions"]
    expected = server["model"].predict(pd.DataFrame({"image": [image]}))
    assert len(predictions) == 1 and predictions[0]["label"] == expected["label"][0]
    assert predictions[0]["p_COVID"] == pytest.approx(float(expected["p_COVID"][0]), abs=1e-5)


def test_every_documented_request_shape_is_answered(server) -> None:
    """``inputs`` as {"image": [...]} or a plain list, and ``dataframe_split``, give the same answer."""
    images = png_images(2)
    b64 = [base64.b64encode(b).decode("ascii") for b in images]
    expected = list(server["model"].predict(pd.DataFrame({"image": images}))["label"])
    for payload in (
        {"inputs": {"image": b64}},
        {"inputs": b64},
        {"dataframe_split": {"columns": ["image"], "data": [[s] for s in b64]}},
    ):
        status, body = post(server["url"] + "/invocations", payload)
        assert status == 200, (payload.keys(), body)
        assert [r["label"] for r in body["predictions"]] == expected, payload.keys()


def test_served_model_rejects_a_bad_image_by_position(server) -> None:
    good = base64.b64encode(png_images(1)[0]).decode("ascii")
    bad = base64.b64encode(b"this is not an image, only text").decode("ascii")
    for payload in ({"inputs": [good, bad]}, {"inputs": {"image": [good, bad]}}):
        status, body = post(server["url"] + "/invocations", payload)
        assert status == 400, body
        # The reason is in the message a client reads, not only in a stack trace.
        assert re.search(r"image\[1\]: .*(neither|cannot be decoded)", body["message"]), body["message"][-500:]


def test_the_server_reads_no_files(server) -> None:
    """A request naming a file on the server is refused, in the same words whether that file exists or not."""
    present = server["root"] / "on-server.png"
    present.write_bytes(png_images(1)[0])
    # Each file that exists, and a name just as long, of the same letters, that names nothing.
    for path, missing in (
        (present, present.with_name("no-server.png")),
        (Path("/etc/hostname"), Path("/etc/hostnamz")),
    ):
        answers = []
        for name in (str(path), str(missing)):
            status, body = post(server["url"] + "/invocations", {"inputs": {"image": [name]}})
            assert status == 400, body
            assert name not in body["message"]
            answers.append(body["message"])
        assert answers[0] == answers[1], answers


def test_a_configured_folder_is_the_only_one_read(rooted_server) -> None:
    """With CXR_SERVE_IMAGE_ROOT set, a file in that folder is read like its bytes; anything else is refused alike."""
    folder, url = rooted_server["folder"], rooted_server["url"] + "/invocations"
    image = png_images(1)[0]
    (folder / "scan.png").write_bytes(image)
    outside = rooted_server["root"] / "outside.png"
    outside.write_bytes(image)
    (folder / "link.png").symlink_to(outside)
    b64 = base64.b64encode(image).decode("ascii")
    status, body = post(url, {"inputs": {"image": [b64, str(folder / "scan.png"), "scan.png"]}})
    assert status == 200, body
    probs = pd.DataFrame(body["predictions"]).filter(like="p_").to_numpy()
    np.testing.assert_allclose(probs[1:], probs[[0, 0]], atol=1e-9)
    answers = set()
    for name in (str(outside), str(outside.with_name("missing.png")), str(folder / "link.png"), "../outside.png"):
        status, body = post(url, {"inputs": {"image": [name]}})
        assert status == 400, body
        answers.add(body["message"].replace(name, "<path>"))
    assert len(answers) == 1, answers


def test_an_image_above_the_pixel_limit_is_refused_from_its_header(server) -> None:
    """A 390 KB PNG of 20000 x 20000 pixels is refused by position with both numbers, not decoded (400 million px)."""
    good = base64.b64encode(png_images(1)[0]).decode("ascii")
    big = base64.b64encode(big_png(20000, 20000)).decode("ascii")
    status, body = post(server["url"] + "/invocations", {"inputs": {"image": [good, big]}})
    assert status == 400, body
    assert "image[1]: too large (20000x20000 = 400,000,000 pixels, above the limit of 25,000,000)" in body["message"]


def test_errors_name_the_field_or_the_image_and_repeat_no_value(server) -> None:
    """The issue's requests (a 38 KB value): a wrong field, an empty list, a bad image. Short 400s, or no rows."""
    value = "Q" * 38_000
    url = server["url"] + "/invocations"
    for payload in ({"inputs": {"img": [value]}}, {"dataframe_split": {"columns": ["img"], "data": [[value]]}}):
        status, body = post(url, payload)
        assert status == 400, str(body)[:300]
        assert body["message"].startswith("no 'image' field in the request: send the images as"), body["message"][:300]
        assert len(json.dumps(body)) < 500
    assert post(url, {"inputs": {"image": []}}) == (200, {"predictions": []})
    good = base64.b64encode(png_images(1)[0]).decode("ascii")
    status, body = post(url, {"inputs": {"image": [good, value]}})
    assert status == 400, str(body)[:300]
    assert body["message"] == "image[1]: cannot be decoded as an image (not a PNG or JPEG with a readable header)"
    assert "stack_trace" not in body
