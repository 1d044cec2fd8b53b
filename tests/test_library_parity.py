"""One HTTP behaviour suite, four apps: the app create_app builds, and a user's own FastAPI app
that mounts loadonce's routers beside its own routes (and uses ModelDependency in one of them),
each served as it is and again under a root path. Every case writes its expected status and
body shape once; each app must give exactly that.

Only public names are used here: what a user's app can reach is all the test may use.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import httpx2 as httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException

import loadonce
from tests.servers import ThreadedServer, wait_until

# The same limits in every app: create_app takes them, and so does the lifespan a user mounts.
LIMITS = loadonce.Limits(max_body_bytes=256 * 1024)


class _Guarded:
    """Doubles numbers; refuses negative ones with the app's own 403, as user code may."""

    def predict(self, batch: list[Any]) -> list[float]:
        if any(float(x) < 0 for x in batch):
            raise HTTPException(status_code=403, detail="negative numbers are not allowed")
        if any(float(x) == 13 for x in batch):
            raise KeyError("unlucky")
        return [2 * float(x) for x in batch]


def _sums(batch: Any) -> list[float]:
    return [float(sum(row)) for row in batch]


class _Gate:
    """Holds every call of the slow model until released; says when a call has started."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def reset(self) -> None:
        self.entered.clear()
        self.release.clear()

    def __call__(self, batch: list[Any]) -> list[float]:
        self.entered.set()
        if not self.release.wait(timeout=30):
            raise TimeoutError("the test never released the slow model")
        return [float(x) for x in batch]


GATE = _Gate()


def _specs() -> list[loadonce.ModelSpec]:
    return [
        loadonce.ModelSpec(name="m", loader=_Guarded, input_shape=()),
        loadonce.ModelSpec(
            name="f32", loader=lambda: _sums, input_shape=(2,), options={"input_dtype": "float32"}
        ),
        loadonce.ModelSpec(
            name="slow",
            loader=lambda: GATE,
            input_shape=(),
            concurrency="serialized",
            max_queue=1,
        ),
    ]


# At module level: with postponed annotations, FastAPI resolves Depends(...) from the globals.
DOUBLER = loadonce.ModelDependency("m")


def _users_app() -> FastAPI:
    """As README's library mode: the user's lifespan, routes and dependency beside loadonce's."""
    app = FastAPI(lifespan=loadonce.lifespan(_specs(), limits=LIMITS))
    app.include_router(loadonce.health_router())
    app.include_router(loadonce.models_router())
    app.include_router(loadonce.v2_router())
    app.include_router(loadonce.admin_router())
    app.include_router(loadonce.metrics_router())
    loadonce.install_middleware(app)
    return _with_the_users_routes(app)


def _with_the_users_routes(app: FastAPI) -> FastAPI:
    """Routes of the user's own, one of them using a model through ModelDependency: added
    the same way to create_app's app and to the user's."""

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    @app.get("/mine/double")
    async def double(
        x: float, model: Annotated[loadonce.Model, Depends(DOUBLER)]
    ) -> dict[str, float]:
        [doubled] = await model.predict(x)
        return {"doubled": doubled}

    return app


@pytest.fixture(
    scope="module",
    params=[("create_app", ""), ("users_app", ""), ("create_app", "/ml"), ("users_app", "/ml")],
    ids=lambda p: f"{p[0]}{' under ' + p[1] if p[1] else ''}",
)
def server(request: pytest.FixtureRequest) -> Iterator[ThreadedServer]:
    kind, root_path = request.param
    if kind == "create_app":
        app = _with_the_users_routes(loadonce.create_app(_specs(), limits=LIMITS))
    else:
        app = _users_app()
    with ThreadedServer(app, root_path=root_path) as running:
        yield running


@pytest.fixture
def http(server: ThreadedServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@dataclass(frozen=True)
class Expected:
    """A status and a body shape: its exact keys, and the stable start of its message."""

    status: int
    keys: frozenset[str]
    message: str | None = None  # the start of body["error"] (or body["detail"])
    contains: str | None = None  # a part of it further on

    def check(self, response: httpx.Response) -> dict[str, Any]:
        body: dict[str, Any] = response.json()
        text = body.get("error", body.get("detail"))
        got = (response.status_code, sorted(body))
        assert got == (self.status, sorted(self.keys)), response.text
        if self.message is not None:
            assert str(text).startswith(self.message), response.text
        if self.contains is not None:
            assert self.contains in str(text), response.text
        return body


def expect(
    status: int, *keys: str, message: str | None = None, contains: str | None = None
) -> Expected:
    return Expected(status, frozenset(keys), message, contains)


JSON_ERROR = ("error", "request_id")  # the JSON routes' errors
V2_ERROR = ("error",)  # the Open Inference Protocol's errors
PREDICT = "/models/m/predict"
INFER = "/v2/models/m/infer"
UNKNOWN = "model 'nope' is not served here; models served: 'm', 'f32', 'slow'"
# Under /v2, in Triton's words first: clients written against Triton look for them.
V2_UNKNOWN = (
    "Request for unknown model: 'nope' is not served here; models served: 'm', 'f32', 'slow'"
)


V2_LOAD_UNKNOWN = (
    "failed to load 'nope': no model of that name is declared here (loadonce loads only the "
    "models declared at startup); models declared: 'm', 'f32', 'slow'"
)


def tensor(data: list[Any], *, name: str = "input", datatype: str = "FP64") -> dict[str, Any]:
    shape = [len(data), *([len(data[0])] if data and isinstance(data[0], list) else [])]
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def infer_body(*data: Any, **fields: Any) -> dict[str, Any]:
    return {"inputs": [tensor(list(data), **fields)]}


# --- inference that succeeds ---------------------------------------------------------------


def test_json_predict(http: httpx.Client) -> None:
    answer = http.post(PREDICT, json={"inputs": [1, 2.5]})
    body = expect(200, "model", "version", "outputs").check(answer)
    assert body == {"model": "m", "version": "1", "outputs": [2.0, 5.0]}


@pytest.mark.parametrize("path", [INFER, "/v2/models/m/versions/1/infer"])
def test_v2_infer_json_tensors(http: httpx.Client, path: str) -> None:
    answer = http.post(path, json={"id": "abc", **infer_body(1, 2.5)})
    body = expect(200, "id", "model_name", "model_version", "outputs").check(answer)
    assert (body["id"], body["model_name"], body["model_version"]) == ("abc", "m", "1")
    assert [output["data"] for output in body["outputs"]] == [[2.0, 5.0]]


def test_v2_answers_compressed_when_asked(http: httpx.Client) -> None:
    values = list(range(14, 314))  # over 1 KiB of answer, and no 13 among them
    answer = http.post(INFER, json=infer_body(*values), headers={"Accept-Encoding": "gzip"})
    assert (answer.status_code, answer.headers.get("content-encoding")) == (200, "gzip")
    assert answer.json()["outputs"][0]["data"] == [2.0 * v for v in values]


def test_the_users_own_routes_answer_beside_loadonces(http: httpx.Client) -> None:
    assert http.get("/hello").json() == {"hello": "world"}
    doubled = http.get("/mine/double", params={"x": 4})
    assert (doubled.status_code, doubled.json()) == (200, {"doubled": 8.0})


# --- the request is wrong ------------------------------------------------------------------


def test_unknown_model(http: httpx.Client) -> None:
    expect(
        404,
        *JSON_ERROR,
        message=UNKNOWN,
    ).check(http.post("/models/nope/predict", json={"inputs": [1]}))
    expect(404, *V2_ERROR, message=V2_UNKNOWN).check(
        http.post("/v2/models/nope/infer", json=infer_body(1))
    )


def test_unknown_version(http: httpx.Client) -> None:
    expect(404, *V2_ERROR, message="model 'm' has no version '9'; it serves version '1'").check(
        http.post("/v2/models/m/versions/9/infer", json=infer_body(1))
    )


@pytest.mark.parametrize("content", [b"{not json", b'{"outputs": [1]}', b"[1, 2]"])
def test_invalid_body(http: httpx.Client, content: bytes) -> None:
    headers = {"content-type": "application/json"}
    json_route = expect(422, *JSON_ERROR, "fields", message="invalid request: body")
    json_route.check(http.post(PREDICT, content=content, headers=headers))
    expect(400, *V2_ERROR, message="invalid request: body").check(
        http.post(INFER, content=content, headers=headers)
    )


def test_wrong_shape(http: httpx.Client) -> None:
    expect(400, *JSON_ERROR, message="invalid inputs: inputs must be one example").check(
        http.post(PREDICT, json={"inputs": [[1, 2], [3, 4]]})
    )
    body = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
    expect(400, *V2_ERROR, message="invalid inputs: input 'input' has shape [1, 2]").check(
        http.post(INFER, json=body)
    )


def test_wrong_datatype(http: httpx.Client) -> None:
    expect(400, *JSON_ERROR, message="invalid inputs: ", contains="must be numbers").check(
        http.post(PREDICT, json={"inputs": ["one"]})
    )
    expect(400, *V2_ERROR, message="invalid inputs: input 'input' is INT64").check(
        http.post(INFER, json=infer_body(1, datatype="INT64"))
    )


def test_a_number_outside_fp32_is_refused_by_both_protocols(http: httpx.Client) -> None:
    # The same policy on both protocols: a finite number that FP32 cannot hold is a 400, never
    # an infinity handed to the model.
    expect(
        400, *JSON_ERROR, message="invalid inputs: ", contains="outside the range of float32"
    ).check(http.post("/models/f32/predict", json={"inputs": [[1e39, 0]]}))
    expect(400, *V2_ERROR, message="invalid inputs: ", contains="outside the range of FP32").check(
        http.post("/v2/models/f32/infer", json=infer_body([1e39, 0], datatype="FP32"))
    )
    # Within range, both answer.
    assert http.post("/models/f32/predict", json={"inputs": [[1, 2]]}).json()["outputs"] == [3.0]
    inferred = http.post("/v2/models/f32/infer", json=infer_body([1, 2], datatype="FP32"))
    assert inferred.json()["outputs"][0]["data"] == [3.0], inferred.text


@pytest.mark.parametrize("timeout", ["soon", "-1", "0", "nan", "inf", "1e309", "1_0", "0x10"])
def test_invalid_request_timeout(http: httpx.Client, timeout: str) -> None:
    headers = {"X-Request-Timeout": timeout}
    expect(422, *JSON_ERROR, "fields", message="invalid request: header.X-Request-Timeout").check(
        http.post(PREDICT, json={"inputs": [1]}, headers=headers)
    )
    expect(400, *V2_ERROR, message="invalid request: header.X-Request-Timeout").check(
        http.post(INFER, json=infer_body(1), headers=headers)
    )


@pytest.mark.parametrize("timeout", [b"2 ", b"\t2\t", b" 2"])
def test_a_request_timeout_with_spaces_around_it(server: ThreadedServer, timeout: bytes) -> None:
    """A field's value is what lies between its leading and trailing spaces and tabs (RFC
    9110): "2 " was a 422 while " 2" (which the parser strips) was taken. Sent by hand:
    httpx refuses to send such a value."""
    body = b'{"inputs": [1]}'
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(
            b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n"
            b"X-Request-Timeout:" + timeout + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_unsupported_content_encoding(http: httpx.Client) -> None:
    headers = {"content-type": "application/json", "content-encoding": "br"}
    answer = http.post(INFER, content=json.dumps(infer_body(1)).encode(), headers=headers)
    expect(415, *V2_ERROR).check(answer)
    # The JSON route read it as plain text, whatever it said: "Invalid JSON" for gzip.
    answer = http.post(PREDICT, content=b'{"inputs": [1]}', headers=headers)
    expect(415, *JSON_ERROR, message="Content-Encoding 'br' is not supported").check(answer)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_the_json_route_reads_a_compressed_body(http: httpx.Client, coding: str) -> None:
    plain = json.dumps({"inputs": [1, 2.5]}).encode()
    content = gzip.compress(plain) if coding == "gzip" else zlib.compress(plain)
    headers = {"content-type": "application/json", "content-encoding": coding}
    answer = http.post(PREDICT, content=content, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == http.post(PREDICT, content=plain).json()["outputs"]
    expect(400, *JSON_ERROR, message=f"invalid inputs: the {coding} body is truncated").check(
        http.post(PREDICT, content=content[: len(content) // 2], headers=headers)
    )


def test_a_body_that_decompresses_past_the_limit(http: httpx.Client) -> None:
    # Small on the wire, past LIMITS.max_body_bytes once inflated: the one body limit a user's
    # app sets the same way as create_app's (lifespan(limits=)).
    padding = b" " * (LIMITS.max_body_bytes or 0)
    content = gzip.compress(json.dumps(infer_body(1)).encode() + padding)
    headers = {"content-type": "application/json", "content-encoding": "gzip"}
    expect(413, *V2_ERROR, message="the body decompresses to more than").check(
        http.post(INFER, content=content, headers=headers)
    )
    bomb = gzip.compress(b'{"inputs": [1]}' + padding)
    expect(413, *JSON_ERROR, message="the body decompresses to more than").check(
        http.post(PREDICT, content=bomb, headers=headers)
    )


def test_a_body_over_the_limit_is_refused_before_it_is_read(http: httpx.Client) -> None:
    too_big = b"[" + b"1," * (LIMITS.max_body_bytes or 0) + b"1]"
    message = "the request body is larger than 262144 bytes, this server's max_body_bytes"
    headers = {"content-type": "application/json"}
    expect(413, *JSON_ERROR, message=message).check(
        http.post(PREDICT, content=b'{"inputs": ' + too_big + b"}", headers=headers)
    )
    expect(413, *V2_ERROR, message=message).check(
        http.post(INFER, content=b'{"inputs": ' + too_big + b"}", headers=headers)
    )


# --- the model's code fails ----------------------------------------------------------------


def test_user_code_raising_http_exception_answers_its_status(http: httpx.Client) -> None:
    refused = expect(403, "detail", message="negative numbers are not allowed")
    refused.check(http.post(PREDICT, json={"inputs": [-1]}))
    refused.check(http.post(INFER, json=infer_body(-1)))


def test_what_the_model_raises_is_said_to_be_the_models(http: httpx.Client) -> None:
    said = "the model raised KeyError (model 'm'); the server log has the details under request id "
    for answer, keys in (
        (http.post(PREDICT, json={"inputs": [13]}), JSON_ERROR),
        (http.post(INFER, json=infer_body(13)), V2_ERROR),
    ):
        expect(500, *keys, message=said).check(answer)
        assert answer.json()["error"] == said + answer.headers["x-request-id"]
        for leak in ("Traceback", "unlucky", __file__, ".py"):
            assert leak not in answer.text


def test_model_predict_wraps_what_the_model_raises() -> None:
    async def predict_unlucky() -> None:
        registry = loadonce.Registry(_specs())
        await registry.load_all()
        try:
            await registry.get("m").predict([13])
        finally:
            await registry.unload_all()

    with pytest.raises(loadonce.ModelRaisedError) as raised:
        asyncio.run(predict_unlucky())
    assert isinstance(raised.value.__cause__, KeyError)
    assert isinstance(raised.value.model_error, KeyError)


# --- request ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (PREDICT, {"inputs": [1]}, 200),
        (INFER, infer_body(1), 200),
        ("/models/nope/predict", {"inputs": [1]}, 404),
        ("/v2/models/nope/infer", infer_body(1), 404),
        (PREDICT, {"inputs": [13]}, 500),
        (INFER, infer_body(13), 500),
        (PREDICT, {"outputs": []}, 422),
        (INFER, {"outputs": []}, 400),
    ],
)
def test_the_request_id_is_echoed(
    http: httpx.Client, path: str, body: dict[str, Any], status: int
) -> None:
    answer = http.post(path, json=body, headers={"X-Request-ID": "parity-42"})
    assert (answer.status_code, answer.headers.get("x-request-id")) == (status, "parity-42")
    if status >= 400 and path.startswith("/models"):
        assert answer.json()["request_id"] == "parity-42"


@pytest.mark.parametrize(("path", "body"), [(PREDICT, {"inputs": [-1]}), (INFER, infer_body(-1))])
def test_the_request_id_is_echoed_when_the_users_code_answers(
    http: httpx.Client, path: str, body: dict[str, Any]
) -> None:
    # The model raised an HTTPException: the app's own handler answers it, with the request id.
    answer = http.post(path, json=body, headers={"X-Request-ID": "parity-44"})
    assert (answer.status_code, answer.headers.get("x-request-id")) == (403, "parity-44")


@pytest.mark.parametrize(("path", "status"), [(PREDICT, 405), (INFER, 405)])
def test_the_request_id_is_echoed_on_a_wrong_method(
    http: httpx.Client, path: str, status: int
) -> None:
    answer = http.get(path, headers={"X-Request-ID": "parity-43"})
    assert (answer.status_code, answer.headers.get("x-request-id")) == (status, "parity-43")


@pytest.mark.parametrize("path", ["/hello", "/no/such/route", "/v2/no/such/route", "/livez"])
def test_every_answer_carries_a_request_id(http: httpx.Client, path: str) -> None:
    answer = http.get(path, headers={"X-Request-ID": "parity-45"})
    assert answer.headers.get("x-request-id") == "parity-45"


# --- the Open Inference Protocol's metadata and health --------------------------------------


def test_v2_server_metadata(http: httpx.Client) -> None:
    body = expect(200, "name", "version", "extensions").check(http.get("/v2"))
    assert (body["name"], body["version"]) == ("loadonce", loadonce.__version__)
    assert body["extensions"] == [
        "binary_tensor_data",
        "classification",
        "parameters",
        "generate",
        "model_repository",
        "statistics",
    ]


@pytest.mark.parametrize("path", ["/v2/models/m", "/v2/models/m/versions/1"])
def test_v2_model_metadata(http: httpx.Client, path: str) -> None:
    body = expect(200, "name", "versions", "platform", "inputs", "outputs").check(http.get(path))
    assert (body["name"], body["versions"], body["platform"]) == ("m", ["1"], "python")
    assert body["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1]}]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v2/models/m/ready", {"name": "m", "ready": True}),
        ("/v2/models/m/versions/1/ready", {"name": "m", "ready": True}),
        ("/v2/health/live", {"live": True}),
        ("/v2/health/ready", {"ready": True}),
    ],
)
def test_v2_readiness(http: httpx.Client, path: str, expected: dict[str, Any]) -> None:
    answer = http.get(path)
    assert (answer.status_code, answer.json()) == (200, expected)


def test_v2_metadata_of_an_unknown_model(http: httpx.Client) -> None:
    expect(404, *V2_ERROR, message=V2_UNKNOWN).check(http.get("/v2/models/nope"))
    expect(404, *V2_ERROR, message=V2_UNKNOWN).check(http.get("/v2/models/nope/ready"))


# --- probes and listings -------------------------------------------------------------------


def test_livez(http: httpx.Client) -> None:
    body = expect(200, "status", "worker_pid").check(http.get("/livez"))
    assert body["status"] == "alive"


def test_readyz(http: httpx.Client) -> None:
    body = expect(200, "ready", "draining", "worker_pid", "models", "hung_calls").check(
        http.get("/readyz")
    )
    assert (body["ready"], body["draining"]) == (True, False)
    assert body["models"] == {"m": "ready", "f32": "ready", "slow": "ready"}


def test_models_listing(http: httpx.Client) -> None:
    body = expect(200, "worker_pid", "models").check(http.get("/models"))
    assert [model["name"] for model in body["models"]] == ["m", "f32", "slow"]
    one = expect(200, *body["models"][0]).check(http.get("/models/m"))
    assert (one["name"], one["version"], one["state"], one["runtime"]) == (
        "m",
        "1",
        "ready",
        "python",
    )
    assert (one["input_shape"], one["input_dtype"]) == ([], "float64")
    expect(
        404,
        *JSON_ERROR,
        message=UNKNOWN,
    ).check(http.get("/models/nope"))


def test_models_listing_names_the_workers_serving_each_model(http: httpx.Client) -> None:
    # Facts about the model, not about the app that serves it: the same in every app.
    one = http.get("/models/m").json()
    assert one["workers"] == [{"pid": one["worker_pid"], "version": "1", "state": "ready"}]


# --- the model repository ------------------------------------------------------------------


def test_the_repository_index(http: httpx.Client) -> None:
    answer = http.post("/v2/repository/index")
    assert answer.status_code == 200, answer.text
    assert answer.json() == [
        {"name": name, "version": "1", "state": "READY", "reason": ""}
        for name in ("m", "f32", "slow")
    ]
    ready_only = http.post("/v2/repository/index", json={"ready": True})
    assert ready_only.json() == answer.json()


def test_the_model_repository_loads_and_unloads(http: httpx.Client) -> None:
    unloaded = http.post("/v2/repository/models/m/unload")
    assert (unloaded.status_code, unloaded.json()) == (200, {"name": "m", "unload": True})
    try:
        not_ready = "model 'm' is not ready (state: unloaded)"
        for answer, keys in (
            (http.post(PREDICT, json={"inputs": [2]}), JSON_ERROR),
            (http.post(INFER, json=infer_body(2)), V2_ERROR),
            (http.get("/v2/models/m/ready"), V2_ERROR),
        ):
            expect(503, *keys, message=not_ready).check(answer)
            # Unloaded until an operator loads it: no "retry in a second".
            assert answer.headers.get("retry-after") is None
        index = {entry["name"]: entry for entry in http.post("/v2/repository/index").json()}
        assert index["m"] == {
            "name": "m",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "unloaded on request",
        }
        # One model unloaded on purpose leaves the server ready, as in Triton.
        assert http.get("/readyz").status_code == http.get("/v2/health/ready").status_code == 200
    finally:
        loaded = http.post("/v2/repository/models/m/load")
    assert (loaded.status_code, loaded.json()) == (200, {"name": "m", "load": True})
    assert http.post(PREDICT, json={"inputs": [2]}).json()["outputs"] == [4.0]
    # Loading: in Triton's words for a model it cannot load (its model-control examples
    # look for them).
    expect(404, *V2_ERROR, message=V2_LOAD_UNKNOWN).check(
        http.post("/v2/repository/models/nope/load")
    )


def test_the_admin_reload_and_its_validation(http: httpx.Client) -> None:
    reloaded = http.post("/admin/models/m/reload")
    body = expect(200, "model", "ok", "workers").check(reloaded)
    assert (body["model"], body["ok"], body["workers"][0]["state"]) == ("m", True, "ready")
    invalid = http.post("/admin/models/m/reload", json={"artefact": "/x"})
    expect(422, *JSON_ERROR, "fields", message="invalid request: body.artefact").check(invalid)
    expect(404, *JSON_ERROR, message=UNKNOWN).check(http.post("/admin/models/nope/reload"))


def test_metrics_count_requests_under_the_routes_template(http: httpx.Client) -> None:
    def counted(route: str, status: str) -> float:
        series = f'loadonce_requests_total{{model="m",route="{route}",status="{status}"}} '
        lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith(series)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = (
        counted("/models/{name}/predict", "200"),
        counted("/v2/models/{model_name}/infer", "400"),
    )
    http.post(PREDICT, json={"inputs": [1]})
    http.post(INFER, json=infer_body("x"))
    after = (
        counted("/models/{name}/predict", "200"),
        counted("/v2/models/{model_name}/infer", "400"),
    )
    assert (after[0] - before[0], after[1] - before[1]) == (1.0, 1.0)


# --- overload ------------------------------------------------------------------------------


def test_a_full_queue_is_refused_with_retry_after(server: ThreadedServer) -> None:
    """One call running (held by the gate), one request queued (max_queue=1): the next is
    refused at once on both protocols."""
    GATE.reset()
    answers: list[httpx.Response] = []

    def send(path: str, body: dict[str, Any]) -> None:
        answers.append(httpx.post(f"{server.url}{path}", json=body, timeout=30))

    running = threading.Thread(target=send, args=("/models/slow/predict", {"inputs": [1]}))
    queued = threading.Thread(target=send, args=("/v2/models/slow/infer", infer_body(2)))
    try:
        running.start()
        assert GATE.entered.wait(timeout=10)
        queued.start()
        wait_until(
            lambda: httpx.get(f"{server.url}/models/slow").json()["queue"]["queued_examples"] == 1,
            10,
            "the second request to wait in the slow model's queue",
        )
        refused = [
            httpx.post(f"{server.url}{path}", json=body, headers={"X-Request-ID": f"full-{i}"})
            for i, (path, body) in enumerate(
                [
                    ("/models/slow/predict", {"inputs": [3]}),
                    ("/v2/models/slow/infer", infer_body(3)),
                ]
            )
        ]
    finally:
        GATE.release.set()
        running.join(timeout=30)
        queued.join(timeout=30)
    full = "model 'slow' is overloaded: 1 examples are queued (max_queue 1)"
    expect(503, *JSON_ERROR, message=full).check(refused[0])
    expect(503, *V2_ERROR, message=full).check(refused[1])
    assert [(r.headers.get("retry-after"), r.headers.get("x-request-id")) for r in refused] == [
        ("1", "full-0"),
        ("1", "full-1"),
    ]
    # Both held requests are answered once the model is free.
    assert sorted(answer.status_code for answer in answers) == [200, 200]
