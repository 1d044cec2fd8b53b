"""The HTTP surface: predict, /models, and every error as JSON a person can act on."""

from __future__ import annotations

import json
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


class _Echo(loadonce.Predictor):
    """Generates the prompt's words back."""

    max_new_tokens = 10

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)

    def generate(self, request: loadonce.GenerationRequest) -> Iterator[str]:
        for word in (request.prompt or "").split():
            yield word + " "


@pytest.fixture(scope="module")
def every_route() -> Iterator[TestClient]:
    """A model of every kind that loadonce's own routes taking a body answer."""
    specs = [
        loadonce.ModelSpec(
            name="adder",
            loader=lambda: _sum_rows,
            input_shape=(3,),
            max_request_examples=200_000,  # a large body of small examples
            max_queue=200_000,
        ),
        loadonce.ModelSpec(name="echo", loader=_Echo),
    ]
    with TestClient(loadonce.create_app(specs), raise_server_exceptions=False) as test_client:
        yield test_client


# loadonce's own routes that take a JSON body: each one's path, and a body it answers 200.
_BODY_ROUTES = {
    "predict": ("/models/adder/predict", {"inputs": [1, 2, 3]}),
    "generate": ("/models/echo/generate", {"prompt": "a b"}),
    "reload": ("/admin/models/adder/reload", {"version": "1"}),
}


def _send(client: TestClient, route: str, body: bytes) -> Any:
    path, _ = _BODY_ROUTES[route]
    return client.post(path, content=body, headers={"content-type": "application/json"})


def _refused_naming(response: Any, field: str) -> None:
    """The rule of loadonce's own routes (the protocols' routes answer 400, in their own
    bodies): a body not of the route's form is a 422 naming the field, with the request id."""
    assert response.status_code == 422, response.text
    payload = response.json()
    assert field in [entry["field"] for entry in payload["fields"]], payload
    assert field in payload["error"]
    assert payload["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.parametrize("route", sorted(_BODY_ROUTES))
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2, 3]", "body"),
        (b'"text"', "body"),
        (b"null", "body"),
        (b'{"zzz_unknown": 1}', "body.zzz_unknown"),
    ],
)
def test_a_body_not_of_the_routes_form_is_422_naming_the_field(
    every_route: TestClient, route: str, body: bytes, field: str
) -> None:
    _refused_naming(_send(every_route, route, body), field)


@pytest.mark.parametrize("route", sorted(_BODY_ROUTES))
def test_every_route_answers_its_body_whatever_the_content_type_says(
    every_route: TestClient, route: str
) -> None:
    """Content-Type is not read (``curl -d`` sends a form's): the body is JSON or a 422."""
    path, body = _BODY_ROUTES[route]
    for headers in ({}, {"content-type": "text/plain"}):
        response = every_route.post(path, content=json.dumps(body).encode(), headers=headers)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("predict", {"input": [1, 2, 3]}, "body.inputs"),
        ("predict", {}, "body.inputs"),
        ("predict", {"inputs": [1, 2, 3], "outputs": "sum"}, "body.outputs"),
        ("predict", {"inputs": [1, 2, 3], "parameters": [1]}, "body.parameters"),
        ("generate", {}, "body.prompt"),
        ("generate", {"prompt": 1}, "body.prompt"),
        ("generate", {"prompt": "a", "stream": "yes"}, "body.stream"),
        (
            "generate",
            {"prompt": "a", "parameters": {"temperature": "0.5"}},
            "body.parameters.temperature",
        ),
        ("reload", {"artifact": 1}, "body.artifact"),
        ("reload", {"version": 2}, "body.version"),
    ],
)
def test_a_missing_field_or_one_of_the_wrong_type_is_422_naming_it(
    every_route: TestClient, route: str, body: Any, field: str
) -> None:
    _refused_naming(_send(every_route, route, json.dumps(body).encode()), field)


@pytest.mark.parametrize("route", ["predict", "generate"])
def test_an_empty_body_is_422_where_the_route_needs_one(
    every_route: TestClient, route: str
) -> None:
    _refused_naming(_send(every_route, route, b""), "body")


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("predict", b'{"inputs": [1, 2, 3], "inputs": [4, 5, 6]}', "body.inputs"),
        ("predict", b'{"inputs": [1, 2, 3], "\\u0069nputs": [4, 5, 6]}', "body.inputs"),
        (
            "predict",
            b'{"inputs": [1, 2, 3], "parameters": {}, "parameters": {}}',
            "body.parameters",
        ),
        (
            "generate",
            b'{"prompt": "a b c", "parameters": {"max_new_tokens": 1, "max_new_tokens": 9}}',
            "body.parameters.max_new_tokens",
        ),
        (
            "generate",
            b'{"prompt": "a", "parameters": {"max_new_tokens": 1, "max_new_token\\u0073": 9}}',
            "body.parameters.max_new_tokens",
        ),
        ("generate", b'{"prompt": "a", "prompt": "b"}', "body.prompt"),
        ("reload", b'{"version": "1", "version": "2"}', "body.version"),
    ],
)
def test_a_key_given_twice_is_422_naming_it(
    every_route: TestClient, route: str, body: bytes, field: str
) -> None:
    """A filter in front of the server that reads the first of two keys (as RapidJSON and
    many proxies do) passed a request other than the one served, which read the last."""
    _refused_naming(_send(every_route, route, body), field)


def test_a_key_given_twice_in_a_large_body_is_422_naming_it(every_route: TestClient) -> None:
    """A body past 1 MiB is parsed a piece of its inputs at a time: the rest is checked."""
    inputs = json.dumps([[1, 2, 3]] * 120_000)
    body = f'{{"parameters": {{}}, "inputs": {inputs}, "parameters": {{}}}}'.encode()
    assert len(body) > 1 << 20
    _refused_naming(_send(every_route, "predict", body), "body.parameters")


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("predict", b'{"inputs": [1, 2, 3], "outputs": null, "parameters": null}'),
        ("generate", b'{"prompt": "prompt", "stream": false}'),  # a value, not a key, twice
        ("generate", b'{"prompt": "caf\\u00e9 \\"prompt\\"", "parameters": {"stop": "stop"}}'),
        ("reload", b'{"version": "version"}'),
    ],
)
def test_a_body_whose_keys_appear_once_is_answered(
    every_route: TestClient, route: str, body: bytes
) -> None:
    response = _send(every_route, route, body)
    assert response.status_code == 200, response.text


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


def test_openapi_says_no_route_answers_fastapis_own_422(every_route: TestClient) -> None:
    """FastAPI documents a 422 of its ``{"detail"}`` for a route with parameters; loadonce's
    routes answer every refusal in their protocol's body (a 422 ``{"error", "fields"}`` of
    their own, a 400 ``{"error"}`` under /v2...): a client generated from the document read
    the wrong body."""
    schema = every_route.get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(schema)
    paths = schema["paths"]
    reload = paths["/admin/models/{name}/reload"]["post"]["responses"]["422"]
    assert reload["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    load = paths["/v2/repository/models/{model_name}/load"]["post"]["responses"]
    assert "422" not in load
    assert load["4XX"]["content"]["application/json"]["schema"]["required"] == ["error"]


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
