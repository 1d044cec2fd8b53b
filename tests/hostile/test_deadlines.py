"""A request's deadline counts from its arrival, body reading included: a request whose body
took longer than its deadline is a 504 that never reaches the model."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx2 as httpx

import loadonce
from tests.servers import ThreadedServer


class _Counting:
    def __init__(self) -> None:
        self.calls = 0

    def predict(self, batch: list[Any]) -> list[float]:
        self.calls += 1
        return [2 * float(x) for x in batch]


def test_a_body_slower_than_the_deadline_is_a_504_the_model_never_sees() -> None:
    model = _Counting()
    spec = loadonce.ModelSpec(name="m", loader=lambda: model, input_shape=(), timeout_s=0.3)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        assert httpx.post(f"{server.url}/models/m/predict", json={"inputs": [1]}).status_code == 200
        calls = model.calls
        for path, body in (
            ("/models/m/predict", {"inputs": [1]}),
            (
                "/v2/models/m/infer",
                {"inputs": [{"name": "input", "shape": [1], "datatype": "FP64", "data": [1]}]},
            ),
        ):
            payload = json.dumps(body).encode()
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                    f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                    + payload[:5]
                )
                time.sleep(0.5)  # longer than the model's timeout_s
                sock.sendall(payload[5:])
                answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 504"), (path, answer)
        assert model.calls == calls, "the model never saw the late requests"


class _Slow:
    def predict(self, batch: list[Any]) -> list[float]:
        time.sleep(0.4)
        return [float(x) for x in batch]


def test_a_request_past_its_deadline_is_not_charged_the_calls_compute() -> None:
    """Answered 504 while its call ran on: the statistics extension and /metrics charged it
    the call's compute as if answered (compute counts 2 for one success), unlike Triton's."""
    spec = loadonce.ModelSpec(name="m", loader=_Slow, input_shape=(), batching=False)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        assert httpx.post(f"{server.url}/models/m/predict", json={"inputs": [1]}).status_code == 200
        late = httpx.post(
            f"{server.url}/models/m/predict",
            json={"inputs": [2]},
            headers={"X-Request-Timeout": "0.1"},
        )
        assert late.status_code == 504
        time.sleep(0.6)  # the call returns, and is accounted for
        [stats] = httpx.get(f"{server.url}/v2/models/m/stats").json()["model_stats"]
        inference = stats["inference_stats"]
        assert (inference["success"]["count"], inference["fail"]["count"]) == (1, 1)
        for phase in ("compute_input", "compute_infer", "compute_output"):
            assert inference[phase]["count"] == 1, (phase, inference)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'loadonce_computed_requests_total{model="m"} 1.0' in metrics, metrics
