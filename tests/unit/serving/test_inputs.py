"""What a request may hold, through MLflow's own scoring app (in-process): a missing field, no images, and every
kind of bad image are answered with a 400 that names the field or the image's position and echoes no value."""

from __future__ import annotations

import base64
import json

import numpy as np
import pandas as pd
import pytest
from serving_support import (
    store_fixture,  # noqa: F401 - the fixture store (one logged pyfunc model, temperature 2)
)

#: A value no answer may repeat: 38 KB, as in the request of the issue that was answered with 76 KB.
VALUE = "Q" * 38_000


@pytest.fixture
def scoring(store, monkeypatch):
    """POST a JSON payload to the app `mlflow models serve` runs for the store's model: (status, body text)."""
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT
    from mlflow.pyfunc import scoring_server
    from starlette.testclient import TestClient

    monkeypatch.setenv(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name, "false")  # init sets it; restored afterwards
    client = TestClient(scoring_server.init(store["model"]))

    def post(payload: dict) -> tuple[int, str]:
        body = json.dumps(payload).encode()
        resp = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
        return resp.status_code, resp.text

    return post


def test_a_request_without_the_image_field_is_told_which_field(scoring) -> None:
    for payload in (
        {"inputs": {"img": [VALUE]}},
        {"dataframe_split": {"columns": ["img"], "data": [[VALUE]]}},
        {"dataframe_records": [{"img": VALUE}]},
        {"instances": [{"img": VALUE}]},
        {"inputs": VALUE},
    ):
        status, body = scoring(payload)
        assert status == 400, body[:300]
        assert len(body) < 500 and "QQQQQQQQ" not in body, body[:300]
        message = json.loads(body)["message"]
        assert message.startswith("no 'image' field in the request: send the images as"), message


def test_a_request_without_images_gets_no_predictions(scoring) -> None:
    """As MLflow answers an empty DataFrame: no rows (an empty list used to get a shape error about image[0])."""
    for payload in (
        {"inputs": {"image": []}},
        {"inputs": []},
        {"dataframe_split": {"columns": ["image"], "data": []}},
    ):
        assert scoring(payload) == (200, '{"predictions": []}'), payload


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (VALUE, "cannot be decoded as an image"),  # base64 letters, not an image
        (base64.b64encode(VALUE.encode()).decode(), "cannot be decoded as an image"),
        ("not base64 " + VALUE, "not base64-encoded image data"),
        ("data:image/png;base64," + VALUE, "cannot be decoded as an image"),
        (5, "unsupported image type int"),
        (None, "unsupported image type"),  # null: pandas makes it NaN
        (True, "unsupported image type bool"),
        ({"pixels": VALUE}, ""),
        ([[1, 2], [3]], "rows differ in length"),
        ([[float("nan"), 1.0], [2.0, 3.0]], "must hold uint8 values 0..255"),
        ([[1e400, 1.0], [2.0, 3.0]], "must hold uint8 values 0..255"),
        ([[300, 1], [2, 3]], "must hold uint8 values 0..255"),
        ([["a", "b"], ["c", "d"]], "must hold uint8 values 0..255"),
        ([[[[1]]]], "must be H x W or H x W x 3"),
        ([[]], "must be H x W or H x W x 3"),
    ],
)
def test_a_bad_image_is_a_400_naming_its_position_and_no_value(scoring, store, bad, why: str) -> None:
    good = base64.b64encode(store["images"][0].read_bytes()).decode("ascii")
    status, body = scoring({"inputs": {"image": [good, bad]}})
    assert status == 400, body[:300]
    answer = json.loads(body)
    assert answer["message"].startswith("image[1]: ") and why in answer["message"], answer["message"][:300]
    assert len(body) < 500 and "QQQQQQQQ" not in body and "stack_trace" not in answer, body[:300]


def test_field_names_are_given_back_when_the_model_sees_them(store) -> None:
    """Called straight (not through MLflow, which drops undeclared fields), the model names the fields it got."""
    clf = store["model"].unwrap_python_model()
    long_name = "x" * 500
    for request in (pd.DataFrame({"img": [VALUE], long_name: [1]}), {"img": [VALUE], long_name: [1]}):
        with pytest.raises(ValueError) as err:
            clf.predict(None, request)
        message = str(err.value)
        assert message.startswith(f"no 'image' field in the request (it has 'img', '{'x' * 37}...'): send"), message
        assert "QQQQQQQQ" not in message and len(message) < 300
    six = pd.DataFrame({f"f{i}": [1] for i in range(6)})
    with pytest.raises(ValueError, match=r"\(it has 'f0', 'f1', 'f2', 'f3', 'f4' and 1 more\)"):
        clf.predict(None, six)


def test_a_message_is_not_rewritten_to_carry_the_request() -> None:
    """MLflow's scoring server prefixes an MlflowException's message with the whole request; ours keeps its own."""
    from cxr.serving.inputs import BadImage

    err = BadImage("image[1]: cannot be decoded as an image")
    err.message = f"Failed to predict data '{VALUE}'. \nError: {err.message}"
    assert err.message == "image[1]: cannot be decoded as an image"
    assert json.loads(err.serialize_as_json())["message"] == err.message
    assert len(BadImage("image[0]: " + VALUE).message) == 400


def test_an_unnamed_column_is_read_as_images_and_a_named_one_is_not(store) -> None:
    clf = store["model"].unwrap_python_model()
    raw = store["images"][0].read_bytes()
    assert len(clf.predict(None, pd.DataFrame([raw, raw]))) == 2  # a list made into a frame: column 0
    with pytest.raises(ValueError, match=r"no 'image' field in the request \(it has 'picture'\)"):
        clf.predict(None, pd.DataFrame({"picture": [raw]}))
    assert len(clf.predict(None, np.zeros((0, 8, 8), np.uint8))) == 0


def test_an_unexpected_failure_on_one_image_is_still_a_400_naming_it(scoring, store, monkeypatch) -> None:
    """A decoder's own exception (not a ValueError) used to reach the client as MLflow's "unexpected error" with
    a stack trace; it is the image's fault all the same."""
    from cxr.serving import pyfunc

    def crash(*args, **kwargs):
        raise RuntimeError(f"decoder crashed on {VALUE}")

    monkeypatch.setattr(pyfunc, "load_one", crash)
    good = base64.b64encode(store["images"][0].read_bytes()).decode("ascii")
    status, body = scoring({"inputs": {"image": [good]}})
    assert status == 400, body[:300]
    assert json.loads(body) == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "image[0]: cannot be read as an image (RuntimeError)",
        "sqlstate": "KAM00",
        "error_class": "INVALID_PARAMETER_VALUE",
    }
