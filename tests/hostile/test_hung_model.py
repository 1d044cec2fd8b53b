"""A predict call that never returns is noticed and contained: the worker turns unready, later
requests are still answered, shutdown does not wait for it, and loadonce serve replaces the
worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

import loadonce
from tests.servers import ThreadedServer, cli_env, serving, wait_until


class _Hangs:
    """Doubles numbers; a batch holding -1 blocks until ``release`` is set."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def predict(self, batch: list[Any]) -> list[float]:
        if -1 in list(batch):
            self.release.wait(60)
        return [2 * float(x) for x in batch]


def _spec(release: threading.Event, **fields: Any) -> loadonce.ModelSpec:
    return loadonce.ModelSpec(
        name="m",
        loader=lambda: _Hangs(release),
        input_shape=(),
        concurrency="shared:4",
        batching=loadonce.Batching(max_batch_size=8),
        timeout_s=0.3,
        **fields,
    )


@pytest.fixture
def release() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # whatever happened, the blocked thread ends


def _hung_gauge(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('loadonce_model_hung_calls{model="m"}'):
            return float(line.split()[-1])
    raise AssertionError("no loadonce_model_hung_calls series")


def test_a_hung_call_makes_the_worker_unready_and_later_requests_still_answer(
    release: threading.Event,
) -> None:
    app = loadonce.create_app([_spec(release, hang_timeout_s=0.5)])
    with ThreadedServer(app) as server:
        url = server.url
        hung = httpx.post(f"{url}/models/m/predict", json={"inputs": [-1]})
        assert hung.status_code == 504
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 503, 5, "readyz 503")
        ready = httpx.get(f"{url}/readyz").json()
        assert ready["hung_calls"] == {"m": 1}
        assert _hung_gauge(url) == 1
        # Batching goes on beside the hung call: later requests are answered.
        for value in (1, 2, 3):
            answered = httpx.post(f"{url}/models/m/predict", json={"inputs": [value]})
            assert answered.json()["outputs"] == [2 * value]
        tensor = {"name": "input", "shape": [1], "datatype": "FP64", "data": [4]}
        infer = httpx.post(f"{url}/v2/models/m/infer", json={"inputs": [tensor]})
        assert infer.json()["outputs"][0]["data"] == [8.0]
        assert httpx.get(f"{url}/v2/models/m/ready").status_code != 200
        release.set()
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 5, "readyz 200")
        assert _hung_gauge(url) == 0


def test_calls_queued_behind_a_hung_one_are_not_hung_themselves(
    release: threading.Event,
) -> None:
    """A serialized model's one thread is stuck: the calls queued behind the hung one never
    began, and were each counted (and logged) as hung in turn, 1, 2, 3..."""
    spec = loadonce.ModelSpec(
        name="m",
        loader=lambda: _Hangs(release),
        input_shape=(),
        concurrency="serialized",
        timeout_s=0.3,
        hang_timeout_s=0.3,
    )
    with ThreadedServer(loadonce.create_app([spec])) as server:
        url = server.url
        hung = httpx.post(f"{url}/models/m/predict", json={"inputs": [-1]})
        assert hung.status_code == 504
        for value in (1, 2, 3):  # each waits behind it, past its timeout
            waited = httpx.post(f"{url}/models/m/predict", json={"inputs": [value]})
            assert waited.status_code == 504
            time.sleep(0.4)
        assert httpx.get(f"{url}/readyz").json()["hung_calls"] == {"m": 1}
        assert _hung_gauge(url) == 1
        release.set()
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 5, "readyz 200")
        answered = httpx.post(f"{url}/models/m/predict", json={"inputs": [5]})
        assert answered.json()["outputs"] == [10.0]


def test_shutdown_does_not_wait_for_a_hung_call(release: threading.Event) -> None:
    app = loadonce.create_app([_spec(release, hang_timeout_s=60)], drain_timeout_s=1)
    server = ThreadedServer(app)
    server.start()
    try:
        assert (
            httpx.post(f"{server.url}/models/m/predict", json={"inputs": [-1]}).status_code == 504
        )
    finally:
        started = time.monotonic()
        server.stop()
    assert time.monotonic() - started < 10
    assert not server._thread.is_alive()


def test_loadonce_serve_replaces_a_worker_whose_model_hangs(tmp_path: Path) -> None:
    config = tmp_path / "loadonce.toml"
    config.write_text(
        """
[server]
workers = 2
drain_timeout_s = 2

[[models]]
name = "m"
loader = "tests.loaders:hangs_on_minus_one"
input_shape = []
concurrency = "shared:2"
timeout_s = 0.2
hang_timeout_s = 0.5
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        url = server.url
        assert httpx.post(f"{url}/models/m/predict", json={"inputs": [-1]}).status_code == 504
        wait_until(lambda: "starting a replacement" in server.log(), 30, "a replacement")
        assert "stops to be replaced: model 'm' has a hung call" in server.log()
        wait_until(
            lambda: all(
                httpx.get(f"{url}/readyz", headers={"Connection": "close"}).status_code == 200
                for _ in range(6)
            ),
            30,
            "every worker ready",
        )
        assert httpx.post(f"{url}/models/m/predict", json={"inputs": [2]}).json()["outputs"] == [4]
