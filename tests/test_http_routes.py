"""The HTTP surface: predict, /models, and every error as JSON a person can act on."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import loadonce


def _sum_rows(batch: Any) -> list[float]:
    return [float(sum(row)) for row in batch]


def _explode(batch: Any) -> list[Any]:
    raise KeyError("secret internal detail /srv/model/weights.bin")


@pytest.fixture
def client() -> Iterator[TestClient]:
    specs = [
        loadonce.ModelSpec(name="adder", loader=lambda: _sum_rows, input_shape=(3,), version="7"),
        loadonce.ModelSpec(name="explodes", loader=lambda: _explode),
    ]
    with TestClient(loadonce.create_app(specs), raise_server_exceptions=False) as test_client:
        yield test_client


def test_predict_one_example_or_a_list(client: TestClient) -> None:
    one = client.post("/models/adder/predict", json={"inputs": [1, 2, 3]})
    assert one.status_code == 200
    assert one.json() == {"model": "adder", "version": "7", "outputs": [6.0]}
    many = client.post("/models/adder/predict", json={"inputs": [[1, 2, 3], [4, 5, 6]]})
    assert many.json()["outputs"] == [6.0, 15.0]
    assert client.get("/models/adder").json()["queue"]["seconds_per_call"] > 0


def test_models_lists_what_an_operator_needs(client: TestClient) -> None:
    body = client.get("/models").json()
    adder = next(m for m in body["models"] if m["name"] == "adder")
    assert adder["state"] == "ready"
    assert adder["version"] == "7"
    assert adder["runtime"] == "python"
    assert adder["concurrency"] == "serialized"
    assert adder["worker_pid"] == body["worker_pid"]
    assert adder["load_count"] == 1
    assert adder["load_seconds"] >= 0
    assert set(adder["memory"]) == {"rss_bytes", "uss_bytes", "pss_bytes", "mapped_bytes"}
    assert adder["weights_shared"] is False  # a loader's object is never mapped
    assert adder["input_shape"] == [3]
    assert adder["queue"] == {
        "queued_examples": 0,
        "max_queue": 1024,
        "max_batch_size": 1,
        "timeout_s": None,
        "seconds_per_call": None,  # nothing predicted yet
        "generating": None,  # a generating model's figure
    }
    assert client.get("/models/adder").json() == adder


def test_unknown_model_is_404_naming_the_models_served(client: TestClient) -> None:
    response = client.post("/models/nope/predict", json={"inputs": [1]})
    assert response.status_code == 404
    assert "model 'nope' is not served here" in response.json()["error"]
    assert "'adder'" in response.json()["error"]
    assert client.get("/models/nope").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input": [1, 2, 3]}, "body.inputs"),
        ({}, "body.inputs"),
        ([1, 2, 3], "body"),
    ],
)
def test_malformed_body_is_422_naming_the_field(client: TestClient, body: Any, field: str) -> None:
    response = client.post("/models/adder/predict", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert field in [f["field"] for f in payload["fields"]]
    assert field in payload["error"]


def test_invalid_json_is_422(client: TestClient) -> None:
    response = client.post(
        "/models/adder/predict", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["error"]


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([1, 2], "shape [3]"),
        ([[1, 2, 3], [1, 2]], "all of the same shape"),
        ([["a", "b", "c"]], "numbers"),
        ([[[1, 2, 3]]], "one example (an array of shape [3] of numbers)"),
    ],
)
def test_wrong_shape_or_type_is_400_saying_what_was_expected(
    client: TestClient, inputs: Any, expected: str
) -> None:
    response = client.post("/models/adder/predict", json={"inputs": inputs})
    assert response.status_code == 400
    assert expected in response.json()["error"]


def test_a_model_that_raises_is_500_with_request_id_and_no_traceback(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="loadonce"):
        response = client.post(
            "/models/explodes/predict", json={"inputs": [1]}, headers={"X-Request-ID": "abc-123"}
        )
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] == "abc-123"
    assert response.headers["X-Request-ID"] == "abc-123"
    assert "KeyError" in body["error"]
    assert "secret internal detail" not in response.text
    assert "Traceback" not in response.text
    logged = "\n".join(r.getMessage() + str(r.exc_info) for r in caplog.records)
    assert "abc-123" in logged
    assert "secret internal detail" in logged


def test_a_forged_request_id_is_replaced(client: TestClient) -> None:
    response = client.post(
        "/models/nope/predict", json={"inputs": [1]}, headers={"X-Request-ID": "a\nb c"}
    )
    assert response.json()["request_id"] != "a\nb c"
    assert len(response.json()["request_id"]) == 32


def test_a_model_returning_the_wrong_number_of_outputs_is_500() -> None:
    spec = loadonce.ModelSpec(name="short", loader=lambda: lambda batch: [1])
    with TestClient(loadonce.create_app([spec]), raise_server_exceptions=False) as client:
        response = client.post("/models/short/predict", json={"inputs": [1, 2, 3]})
    assert response.status_code == 500


def test_openapi_documents_every_route_with_its_models(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ["/livez", "/readyz", "/models", "/models/{name}", "/models/{name}/predict"]:
        assert path in paths
    predict = paths["/models/{name}/predict"]["post"]
    body_schema = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["title"] == "PredictRequest"
    assert body_schema["required"] == ["inputs"]
    assert {p["name"]: p["in"] for p in predict["parameters"]} == {
        "name": "path",
        "X-Request-Timeout": "header",
    }
    assert predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "PredictResponse"
    )
    for status in ["400", "404", "422", "500", "503"]:
        assert predict["responses"][status]["content"]["application/json"]["schema"][
            "$ref"
        ].endswith("ErrorBody")
    assert client.get("/docs").status_code == 200


def test_after_shutdown_readyz_is_503_with_each_models_state() -> None:
    app = loadonce.create_app([loadonce.ModelSpec(name="m", loader=lambda: lambda b: b)])
    client = TestClient(app)
    with client:
        assert client.get("/readyz").json()["models"] == {"m": "ready"}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert response.json()["models"] == {"m": "unloaded"}
    predict = client.post("/models/m/predict", json={"inputs": [1]})
    assert predict.status_code == 503
    assert "not ready (state: unloaded)" in predict.json()["error"]


def test_readyz_without_the_lifespan_is_never_ready() -> None:
    app = loadonce.create_app([loadonce.ModelSpec(name="m", loader=lambda: lambda b: b)])
    client = TestClient(app)  # not a context manager: the lifespan does not run
    response = client.get("/readyz")
    assert response.status_code == 503
    assert client.get("/livez").status_code == 200


def test_docs_load_nothing_from_another_site() -> None:
    """/docs works without internet: every script, style and icon it loads is the app's own,
    also under a root path and with API keys configured (the docs are open)."""
    keys = loadonce.AccessKeys(inference=("an-inference-key-of-32-characters",))
    app = loadonce.create_app(
        [loadonce.ModelSpec(name="m", loader=lambda: lambda b: b)], access=keys
    )
    with TestClient(app, root_path="/ml") as client:
        page = client.get("/docs")
        assert page.status_code == 200
        loaded = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        loaded += re.findall(r"""url: ['"]([^'"]+)['"]""", page.text)
        assert loaded, page.text
        for url in loaded:
            assert url.startswith("/ml/"), url
            answer = client.get(url.removeprefix("/ml"))
            assert answer.status_code == 200, url
        assert client.get("/docs/assets/..%2F..%2Fpyproject.toml").status_code == 404
        assert client.get("/docs/assets/index.html").status_code == 404
