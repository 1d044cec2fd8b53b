"""Whether a client is told that sending a refused request again can help, on every protocol
(REST's /models, /v2 and /v1 with httpx and OpenAI's client; gRPC with tritonclient and
grpcio's own retry policy), against a real server: Retry-After (gRPC: the retry pushback)
only where waiting helps (a full queue, a model still loading), with the wait it needs;
where it cannot (a model an operator unloaded, a deadline shorter than any call of the
model), the answer says not to retry, and a deadline too short is DEADLINE_EXCEEDED / 504,
as when a deadline passes, never "overloaded, retry shortly"."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import httpx2 as httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

import loadonce
from loadonce.core.generation import GenerationRequest
from loadonce.protocols.grpc import grpc_lifespan
from tests.servers import ThreadedServer, free_port

PUSHBACK = "grpc-retry-pushback-ms"
# One call of "paced" while nothing holds it (its pace, once measured).
PACE_S = 0.6


class Words(loadonce.Predictor):
    """Answers each example as it came, and generates a prompt's words back (so that /v1 has
    a model to refuse)."""

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield from (word + " " for word in (request.prompt or "").split())


GATE = threading.Event()
HOLDING = threading.Event()  # set once a call holds the model, waiting for GATE


class Paced(loadonce.Predictor):
    """Each call takes PACE_S; an example "hold" waits for GATE instead (a busy model)."""

    def predict(self, batch: list[Any]) -> list[Any]:
        if any(str(example) == "hold" for example in batch):
            HOLDING.set()
            GATE.wait(30)
        else:
            time.sleep(PACE_S)
        return list(batch)


@dataclass
class Served:
    url: str
    grpc_url: str


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    port = free_port()
    specs = [
        loadonce.ModelSpec(name="gone", loader=Words),
        loadonce.ModelSpec(
            name="paced", loader=Paced, batching=loadonce.Batching(max_batch_size=1)
        ),
    ]
    app = loadonce.create_app(specs, wrap=grpc_lifespan(port=port))
    with ThreadedServer(app) as server:
        assert httpx.post(f"{server.url}/v2/repository/models/gone/unload").status_code == 200
        yield Served(server.url, f"127.0.0.1:{port}")
    GATE.set()


def _infer_body(value: str) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": [value]}]}


def _grpc_request(model: str, value: str) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="x", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        value.encode()
    )
    return request


def _rest_call(served: Served, route: str) -> httpx.Response:
    paths = {
        "/models": ("/models/gone/predict", {"inputs": ["a"]}),
        "/v2 infer": ("/v2/models/gone/infer", _infer_body("a")),
        "/v1 completions": ("/v1/completions", {"model": "gone", "prompt": "a b"}),
    }
    if route == "/v2 ready":
        return httpx.get(f"{served.url}/v2/models/gone/ready")
    path, body = paths[route]
    return httpx.post(f"{served.url}{path}", json=body)


@pytest.mark.parametrize("route", ["/models", "/v2 infer", "/v2 ready", "/v1 completions"])
def test_a_model_an_operator_unloaded_is_a_503_that_says_not_to_retry(
    served: Served, route: str
) -> None:
    answer = _rest_call(served, route)
    assert answer.status_code == 503
    assert "state: unloaded" in answer.text
    # It stays unloaded until an operator loads it: "retry in a second" was untrue.
    assert "retry-after" not in answer.headers
    assert answer.headers["x-should-retry"] == "false"


def test_openais_client_does_not_retry_a_model_an_operator_unloaded(served: Served) -> None:
    sent: list[str] = []
    hooks = {"request": [lambda r: sent.append(str(r.url))]}
    with httpx.Client(event_hooks=hooks) as http_client:
        client = openai.OpenAI(
            base_url=f"{served.url}/v1", api_key="none", max_retries=2, http_client=http_client
        )
        with pytest.raises(openai.InternalServerError) as raised:
            client.completions.create(model="gone", prompt="a b")
    assert raised.value.status_code == 503
    assert len(sent) == 1, "retried a model that stays unloaded"


def _grpc_retrying_channel(url: str) -> grpc.Channel:
    """A channel whose calls gRPC retries on UNAVAILABLE, up to 4 times (its service config's
    retry policy), honouring the server's pushback."""
    policy = {
        "methodConfig": [
            {
                "name": [{"service": "inference.GRPCInferenceService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.01s",
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    options = [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(policy))]
    return grpc.insecure_channel(url, options=options)


def _grpc_calls_counted(served: Served, model: str) -> float:
    text = httpx.get(f"{served.url}/metrics").text
    pattern = rf'loadonce_requests_total\{{model="{model}",route="[^"]*ModelInfer",[^}}]*\}} (\S+)'
    return sum(float(value) for value in re.findall(pattern, text))


def test_grpc_says_not_to_retry_a_model_an_operator_unloaded(served: Served) -> None:
    with triton.InferenceServerClient(served.grpc_url) as client:
        tensor = triton.InferInput("x", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"a"], dtype=np.object_))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("gone", [tensor])
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
        assert "state: unloaded" in raised.value.message()
    before = _grpc_calls_counted(served, "gone")
    with _grpc_retrying_channel(served.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(_grpc_request("gone", "a"), timeout=10)
    error: Any = failed.value
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert dict(error.trailing_metadata())[PUSHBACK] == "-1"
    # grpc's retry policy obeyed it: one attempt, where UNAVAILABLE alone made four.
    assert _grpc_calls_counted(served, "gone") - before == 1


@pytest.fixture(scope="module")
def busy(served: Served) -> Iterator[None]:
    """ "paced" with its pace measured (one call of PACE_S) and a call holding it, for the
    whole module: refused requests never run, so the pace stays what it was measured."""
    assert httpx.post(f"{served.url}/models/paced/predict", json={"inputs": ["p"]}).is_success
    GATE.clear()
    HOLDING.clear()
    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(
            httpx.post, f"{served.url}/models/paced/predict", json={"inputs": ["hold"]}, timeout=60
        )
        # The held call is running (a fixed sleep was too short on a slow machine: the
        # requests below then met an idle model, which admits every one).
        assert HOLDING.wait(30), "the held call never started"
        try:
            yield
        finally:
            GATE.set()
            assert holding.result().is_success


Refuse = Callable[[Served, float], tuple[str, dict[str, str]]]


def _grpc_with_deadline(served: Served, seconds: float) -> tuple[str, dict[str, str]]:
    with grpc.insecure_channel(served.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.ModelInfer(_grpc_request("paced", "q"), timeout=seconds)
    error: Any = failed.value
    return error.code().name, dict(error.trailing_metadata() or ())


def _tritonclient_with_deadline(served: Served, seconds: float) -> tuple[str, dict[str, str]]:
    with triton.InferenceServerClient(served.grpc_url) as client:
        tensor = triton.InferInput("x", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([b"q"], dtype=np.object_))
        with pytest.raises(InferenceServerException) as raised:
            client.infer("paced", [tensor], client_timeout=seconds)
    return str(raised.value.status()).removeprefix("StatusCode."), {}


def _rest_with_header(served: Served, seconds: float) -> tuple[str, dict[str, str]]:
    answer = httpx.post(
        f"{served.url}/v2/models/paced/infer",
        json=_infer_body("q"),
        headers={"X-Request-Timeout": f"{seconds:g}"},
    )
    return str(answer.status_code), dict(answer.headers)


def _rest_with_parameter(served: Served, seconds: float) -> tuple[str, dict[str, str]]:
    body = {**_infer_body("q"), "parameters": {"timeout": int(seconds * 1_000_000)}}
    answer = httpx.post(f"{served.url}/v2/models/paced/infer", json=body)
    return str(answer.status_code), dict(answer.headers)


DEADLINES = {
    "grpc": _grpc_with_deadline,
    "tritonclient": _tritonclient_with_deadline,
    "rest header": _rest_with_header,
    "rest parameter": _rest_with_parameter,
}
EXPIRED = {"grpc": "DEADLINE_EXCEEDED", "tritonclient": "DEADLINE_EXCEEDED"}
OVERLOADED = {"grpc": "UNAVAILABLE", "tritonclient": "UNAVAILABLE"}


@pytest.mark.usefixtures("busy")
@pytest.mark.parametrize("how", DEADLINES)
def test_a_deadline_shorter_than_one_call_is_a_deadline_error_not_overload(
    served: Served, how: str
) -> None:
    # One call takes PACE_S: no retry with this deadline can be answered in time.
    status, headers = DEADLINES[how](served, 0.1)
    assert status == EXPIRED.get(how, "504")
    assert "retry-after" not in {key.lower() for key in headers}
    if how.startswith("rest"):
        assert headers["x-should-retry"] == "false"
    if how == "grpc":
        assert headers[PUSHBACK] == "-1"


@pytest.mark.usefixtures("busy")
@pytest.mark.parametrize("how", DEADLINES)
def test_a_deadline_one_call_fits_but_the_queue_does_not_is_overload_worth_a_retry(
    served: Served, how: str
) -> None:
    # Longer than one call, shorter than the call running and its own: once the model is
    # free, the same request is answered in time. (Between the two, with room on each side
    # for a pace measured slower than PACE_S on a busy machine.)
    status, headers = DEADLINES[how](served, PACE_S * 1.75)
    assert status == OVERLOADED.get(how, "503")
    if how.startswith("rest"):
        assert headers["retry-after"] == "1"
    if how == "grpc":
        assert int(headers[PUSHBACK]) >= 1000
