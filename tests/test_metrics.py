"""GET /metrics: Prometheus text, counted across every worker of the server."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient
from tritonclient.grpc import service_pb2

import loadonce
from tests.servers import cli_env, free_port, serving


def _samples(text: str, name: str) -> dict[str, float]:
    """{label set: value} of one metric's samples."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(\{{.*\}})? (\S+)", line)
        if match:
            found[match.group(1) or ""] = float(match.group(2))
    return found


def test_one_worker_metrics_count_requests_batches_and_model_facts() -> None:
    spec = loadonce.ModelSpec(
        name="m",
        loader=lambda: lambda batch: [x * 2 for x in batch],
        input_shape=(),
        version="5",
        batching=loadonce.Batching(max_batch_size=8),
    )
    with TestClient(loadonce.create_app([spec])) as client:
        for _ in range(3):
            assert client.post("/models/m/predict", json={"inputs": [1, 2, 3]}).status_code == 200
        assert client.post("/models/m/predict", json={"inputs": "x"}).status_code == 400
        assert client.post("/models/nope-1/predict", json={"inputs": [1]}).status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    requests = _samples(text, "loadonce_requests_total")
    assert requests['{model="m",route="/models/{name}/predict",status="200"}'] == 3
    assert requests['{model="m",route="/models/{name}/predict",status="400"}'] == 1
    # An unknown name is not a label value: clients cannot mint time series.
    assert requests['{model="",route="/models/{name}/predict",status="404"}'] == 1
    latency = _samples(text, "loadonce_request_duration_seconds_count")
    assert latency['{model="m",route="/models/{name}/predict"}'] == 4
    batches = _samples(text, "loadonce_batch_size_examples_sum")
    # Three batches of three; the invalid request never reached the model, so it is no batch.
    assert batches['{model="m"}'] == 9
    assert _samples(text, "loadonce_batch_size_examples_count")['{model="m"}'] == 3
    states = _samples(text, "loadonce_model_state")
    assert states['{model="m",state="ready",version="5"}'] == 1
    assert states['{model="m",state="loading",version="5"}'] == 0
    assert _samples(text, "loadonce_model_load_seconds")['{model="m",version="5"}'] >= 0
    assert {'{kind="rss",model="m"}', '{kind="uss",model="m"}', '{kind="pss",model="m"}'} <= set(
        _samples(text, "loadonce_model_memory_bytes")
    )
    assert _samples(text, "loadonce_queue_examples")['{model="m"}'] == 0


def test_two_workers_are_counted_together(tmp_path: Path) -> None:
    config = tmp_path / "loadonce.toml"
    config.write_text(
        """
[server]
workers = 2

[[models]]
name = "echo"
loader = "tests.loaders:echo"
concurrency = "shared"
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        pids = set()
        for i in range(40):
            # A new connection each time, so the kernel may hand it to either worker.
            response = httpx.post(f"{server.url}/models/echo/predict", json={"inputs": [i]})
            pids.add(response.json()["outputs"][0]["pid"])
        assert len(pids) == 2, "both workers answered"
        for _ in range(4):
            text = httpx.get(f"{server.url}/metrics").text
            requests = _samples(text, "loadonce_requests_total")
            # Whichever worker answers the scrape, it counts both workers' requests.
            assert requests['{model="echo",route="/models/{name}/predict",status="200"}'] == 40
            states = _samples(text, "loadonce_model_state")
            ready = [k for k, v in states.items() if 'state="ready"' in k and v == 1]
            assert len(ready) == 2, "one ready series per worker (pid label)"
            assert {re.search(r'pid="(\d+)"', k).group(1) for k in ready} == {  # type: ignore[union-attr]
                str(pid) for pid in pids
            }
            # Each worker froze its loaded objects (the collector leaves them alone).
            frozen = _samples(text, "loadonce_gc_frozen_objects")
            assert {re.search(r'pid="(\d+)"', k).group(1) for k in frozen} == {  # type: ignore[union-attr]
                str(pid) for pid in pids
            }
            assert all(count > 10_000 for count in frozen.values()), frozen


def test_queue_wait_and_compute_time_are_told_apart_per_model() -> None:
    """Four requests at once for a model that computes one at a time for 50 ms: each call
    computed about 50 ms, and the requests after the first waited in the queue meanwhile."""

    def slow(batch: list[float]) -> list[float]:
        time.sleep(0.05)
        return batch

    spec = loadonce.ModelSpec(
        name="slow", loader=lambda: slow, input_shape=(), concurrency="serialized"
    )
    with TestClient(loadonce.create_app([spec])) as client:
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda _: client.post("/models/slow/predict", json={"inputs": [1]}), range(4)
                )
            )
        assert [answer.status_code for answer in answers] == [200] * 4
        text = client.get("/metrics").text
    assert _samples(text, "loadonce_call_duration_seconds_count")['{model="slow"}'] == 4
    assert _samples(text, "loadonce_call_duration_seconds_sum")['{model="slow"}'] >= 4 * 0.05
    assert _samples(text, "loadonce_queue_duration_seconds_count")['{model="slow"}'] == 4
    # Queued one behind another: 0 + 50 + 100 + 150 ms at least, less what overlapped.
    assert _samples(text, "loadonce_queue_duration_seconds_sum")['{model="slow"}'] >= 0.1


def _raises_or_dawdles(batch: list[float]) -> list[float]:
    """Raises on -1; takes x ms for x >= 100."""
    for x in batch:
        if x == -1:
            raise ValueError("the model refuses -1")
        if x >= 100:
            time.sleep(x / 1000)
    return batch


@pytest.mark.parametrize(
    ("failing", "status"),
    [
        pytest.param({"inputs": [-1, 5]}, 500, id="the-model-raised"),
        # The call ran to its end, but its answer came after the deadline: nobody got it.
        pytest.param({"inputs": [300, 5], "headers": {"X-Request-Timeout": "0.1"}}, 504,
                     id="answered-past-the-deadline"),
    ],
)  # fmt: skip
def test_statistics_count_only_successful_inferences_and_executions_as_triton(
    failing: dict[str, Any], status: int
) -> None:
    """Triton's inference_count is the examples of successful requests, execution_count (and
    batch_stats) the executions that answered, and queue the successful requests' waits: a
    call whose every request failed counted in all three, so an operator read a failing
    model as one doing work."""
    spec = loadonce.ModelSpec(name="m", loader=lambda: _raises_or_dawdles, input_shape=())
    with TestClient(loadonce.create_app([spec])) as client:
        headers = failing.get("headers", {})
        answer = client.post(
            "/models/m/predict", json={"inputs": failing["inputs"]}, headers=headers
        )
        assert answer.status_code == status
        # After it: one call at a time, so its call has returned before theirs start.
        for inputs in ([1, 2, 3], [4]):
            assert client.post("/models/m/predict", json={"inputs": inputs}).status_code == 200
        [stats] = client.get("/v2/models/m/stats").json()["model_stats"]
        text = client.get("/metrics").text
    inference = stats["inference_stats"]
    assert (inference["success"]["count"], inference["fail"]["count"]) == (2, 1)
    assert stats["inference_count"] == 3 + 1
    assert stats["execution_count"] == 2
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in stats["batch_stats"]} == {
        3: 1,
        1: 1,
    }
    # Each successful request's queue wait and phases; the failed one is in fail alone.
    assert inference["queue"]["count"] == inference["compute_infer"]["count"] == 2
    # /metrics shows the same figures; its histogram of call sizes keeps every call.
    assert sum(_samples(text, "loadonce_calls_total").values()) == stats["execution_count"]
    assert _samples(text, "loadonce_computed_examples_total")['{model="m"}'] == 4
    assert _samples(text, "loadonce_batch_size_examples_count")['{model="m"}'] == 3


@pytest.mark.parametrize(
    ("method", "path", "route", "model"),
    [
        ("GET", "/models/m/predict", "/models/{name}/predict", "m"),
        ("GET", "/admin/models/m/reload", "/admin/models/{name}/reload", "m"),
        ("DELETE", "/readyz", "/readyz", ""),
        ("PATCH", "/v1/chat/completions", "/v1/chat/completions", ""),
    ],
)
def test_a_wrong_method_is_counted_as_its_routes_other_answers(
    method: str, path: str, route: str, model: str
) -> None:
    """A 405 loadonce's route answered was in the log only: a client calling a route with
    the wrong method never showed on a dashboard."""
    spec = loadonce.ModelSpec(name="m", loader=lambda: lambda batch: batch, input_shape=())
    with TestClient(loadonce.create_app([spec])) as client:
        assert client.request(method, path).status_code == 405
        text = client.get("/metrics").text
    requests = _samples(text, "loadonce_requests_total")
    assert requests[f'{{model="{model}",route="{route}",status="405"}}'] == 1


class _Writer(loadonce.Predictor):
    """Generates three pieces; raises for the prompt "raise", starts late for "late"."""

    max_new_tokens = 10

    def predict(self, batch: list[Any]) -> list[Any]:
        return list(batch)

    def generate(self, request: loadonce.GenerationRequest) -> Iterator[str]:
        if request.prompt == "raise":
            raise ValueError("the model refuses this prompt")
        if request.prompt == "late":
            time.sleep(0.3)
        for index in range(3):
            yield f"{index} "


@pytest.mark.parametrize(
    ("failing", "status"),
    [
        pytest.param({"json": {"prompt": "raise"}}, 500, id="the-model-raised"),
        pytest.param(
            {"json": {"prompt": "late"}, "headers": {"X-Request-Timeout": "0.1"}},
            504,
            id="past-the-deadline",
        ),
    ],
)
def test_a_generating_models_requests_are_in_its_statistics(
    failing: dict[str, Any], status: int
) -> None:
    """A generating model's /v2/models/{m}/stats stayed at zero however many generations it
    ran: its requests never reached the statistics' success and fail."""
    spec = loadonce.ModelSpec(name="g", loader=_Writer)
    with TestClient(loadonce.create_app([spec])) as client:
        assert client.post("/models/g/generate", **failing).status_code == status
        for _ in range(2):
            answer = client.post("/v2/models/g/generate", json={"text_input": "hi"})
            assert answer.status_code == 200, answer.text
        [stats] = client.get("/v2/models/g/stats").json()["model_stats"]
    inference = stats["inference_stats"]
    assert (inference["success"]["count"], inference["fail"]["count"]) == (2, 1)
    assert inference["success"]["ns"] > 0
    assert stats["last_inference"] > 0


def _hostile_requests(url: str, grpc_target: str, value: str) -> None:
    """One request of each kind carrying ``value`` where a client chooses: a model's name or
    version in the path, an unknown path, OpenAI's ``model`` and ``user`` fields, the request
    id, trace and user agent headers, a foreign Host; over gRPC, a model's name and a
    method that does not exist."""
    headers = {
        "X-Request-ID": f"id-{value}",
        "User-Agent": f"agent-{value}",
        "traceparent": f"00-{value.encode().hex().zfill(32)}-{'1' * 16}-01",
    }
    with httpx.Client(base_url=url, headers=headers) as client:
        client.post(f"/models/{value}/predict", json={"inputs": [1]})
        client.post(f"/v2/models/{value}/versions/{value}/infer", json={"inputs": []})
        client.get(f"/v2/models/echo/versions/{value}")
        client.get(f"/v2/models/{value}/stats")
        client.get(f"/{value}")
        client.get("/v2/models/echo")
        client.post("/v1/embeddings", json={"model": value, "input": "x", "user": value})
        client.post("/v1/completions", json={"model": value, "prompt": "x", "user": value})
        client.get("/models", headers={"Host": f"{value}.example"})
    with grpc.insecure_channel(grpc_target) as channel:
        calls = [
            ("ModelMetadata", service_pb2.ModelMetadataRequest(name=value, version=value)),
            ("ModelInfer", service_pb2.ModelInferRequest(model_name=value)),
            (f"Method{value}", service_pb2.ModelMetadataRequest(name="echo")),
        ]
        for method, message in calls:
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            with pytest.raises(grpc.RpcError):
                call(message.SerializeToString(), timeout=10)


def _series(url: str) -> set[str]:
    """Every series /metrics shows, by name and labels."""
    text = httpx.get(f"{url}/metrics").text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if not line.startswith("#")}


def test_no_value_a_client_chooses_becomes_a_series(tmp_path: Path) -> None:
    """Each new label value is a series the server holds for its life: every label comes from
    what the operator declared (models, routes, statuses), whatever clients send, over HTTP
    and gRPC, with several workers writing the multiprocess files."""
    grpc_port = free_port()
    config = tmp_path / "loadonce.toml"
    config.write_text(
        f"""
[server]
workers = 2
grpc_port = {grpc_port}

[[models]]
name = "echo"
loader = "tests.loaders:echo"
concurrency = "shared"
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        grpc_target = f"127.0.0.1:{grpc_port}"
        _hostile_requests(server.url, grpc_target, "a0")  # never a declared name or version
        before = _series(server.url)
        for value in range(1, 12):
            _hostile_requests(server.url, grpc_target, f"a{value}")
        for _ in range(3):  # whichever worker answers
            assert _series(server.url) == before
