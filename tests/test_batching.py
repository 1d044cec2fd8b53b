"""Dynamic batching, bounded queues, deadlines and error isolation, on a real server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

import loadonce
from tests.servers import ThreadedServer, cli_env, start_cli, stop, wait_ready, wait_until


class RecordingModel:
    """Doubles each number; records every call's batch; fails any batch holding a -1."""

    def __init__(self, delay: float = 0.0, first_delay: float | None = None) -> None:
        self.delay = delay
        self.first_delay = first_delay
        self.calls: list[list[Any]] = []
        self.started = threading.Event()
        self._lock = threading.Lock()

    def predict(self, batch: list[Any]) -> list[Any]:
        with self._lock:
            self.calls.append(list(batch))
        self.started.set()
        is_first_call = len(self.calls) == 1
        time.sleep(self.first_delay if is_first_call and self.first_delay else self.delay)
        if -1 in batch:
            raise ValueError("the model cannot take -1")
        return [2 * x for x in batch]

    @property
    def seen(self) -> list[Any]:
        return [x for call in self.calls for x in call]


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadedServer] = []

    def start(model: RecordingModel, **spec: Any) -> ThreadedServer:
        app = loadonce.create_app([loadonce.ModelSpec(name="m", loader=lambda: model, **spec)])
        server = ThreadedServer(app)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def _post_all(url: str, bodies: list[Any], **kwargs: Any) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        return await asyncio.gather(
            *(client.post("/models/m/predict", json=body, **kwargs) for body in bodies)
        )


def test_concurrent_requests_merge_into_batches_and_get_their_own_results(serve: Any) -> None:
    model = RecordingModel(delay=0.02)
    server = serve(model, batching={"max_batch_size": 8})
    # 60 requests of 1 to 3 examples each, all at once.
    bodies = [{"inputs": [i * 10 + k for k in range(i % 3 + 1)]} for i in range(60)]
    responses = asyncio.run(_post_all(server.url, bodies))
    for body, response in zip(bodies, responses, strict=True):
        assert response.status_code == 200
        assert response.json()["outputs"] == [2 * x for x in body["inputs"]]
    assert max(len(call) for call in model.calls) <= 8
    assert len(model.calls) < 60, "requests were merged"
    assert sorted(model.seen) == sorted(x for b in bodies for x in b["inputs"])


def test_a_request_larger_than_a_batch_is_served_whole_not_split(serve: Any) -> None:
    model = RecordingModel()
    server = serve(model, batching={"max_batch_size": 4})
    response = httpx.post(f"{server.url}/models/m/predict", json={"inputs": list(range(10))})
    assert response.json()["outputs"] == [2 * x for x in range(10)]
    assert model.calls == [list(range(10))]


def test_a_lone_request_is_not_held_back_for_a_window(serve: Any) -> None:
    model = RecordingModel()
    server = serve(model, batching={"max_batch_size": 64, "max_wait_ms": 0})
    with httpx.Client(base_url=server.url) as client:
        client.post("/models/m/predict", json={"inputs": [1]})
        started = time.perf_counter()
        client.post("/models/m/predict", json={"inputs": [1]})
        # Far below any batching window a peer would wait: it was dispatched at once.
        assert time.perf_counter() - started < 0.5


def test_under_load_the_next_batch_waits_to_fill_but_an_idle_model_never_does(
    serve: Any,
) -> None:
    model = RecordingModel(delay=0.3)
    server = serve(model, batching={"max_batch_size": 8, "fill_wait_ms": 2000})

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            started = time.perf_counter()
            first = asyncio.create_task(client.post("/models/m/predict", json={"inputs": [1]}))
            while not model.started.is_set():
                await asyncio.sleep(0.01)
            # Queued while the first call runs; when it returns, it is alone in the queue.
            second = asyncio.create_task(client.post("/models/m/predict", json={"inputs": [2]}))
            assert (await first).json()["outputs"] == [2]
            # The idle model took the first request at once, not after the fill window.
            assert time.perf_counter() - started < 1.5
            # Sent after the first call returned: it joins the second in the call that was
            # waiting to fill.
            third = await client.post("/models/m/predict", json={"inputs": [3]})
            assert third.json()["outputs"] == [6]
            assert (await second).json()["outputs"] == [4]

    asyncio.run(scenario())
    assert model.calls == [[1], [2, 3]]


def test_without_fill_wait_the_next_call_takes_what_waits_at_once(serve: Any) -> None:
    model = RecordingModel(delay=0.3)
    server = serve(model, batching={"max_batch_size": 8})

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            first = asyncio.create_task(client.post("/models/m/predict", json={"inputs": [1]}))
            while not model.started.is_set():
                await asyncio.sleep(0.01)
            second = asyncio.create_task(client.post("/models/m/predict", json={"inputs": [2]}))
            await first
            await client.post("/models/m/predict", json={"inputs": [3]})
            await second

    asyncio.run(scenario())
    assert model.calls == [[1], [2], [3]]


def test_a_bad_request_in_a_batch_fails_alone(serve: Any) -> None:
    # The model is kept busy by one request first (each call takes 0.5 s): the requests sent
    # meanwhile gather into the next batch, whatever order they arrive in.
    model = RecordingModel(delay=0.5)
    server = serve(model, batching={"max_batch_size": 16}, input_shape=(), concurrency="serialized")
    busy = _occupy(server, model, inputs=[100])
    bodies: list[Any] = [{"inputs": [i]} for i in range(12)]
    bodies[3] = {"inputs": [-1]}  # the model raises on it
    bodies[7] = {"inputs": [[1, 2]]}  # wrong shape: caught before the batch
    responses = asyncio.run(_post_all(server.url, bodies))
    busy.join()
    statuses = [r.status_code for r in responses]
    assert statuses[3] == 500
    assert statuses[7] == 400
    assert [s for i, s in enumerate(statuses) if i not in (3, 7)] == [200] * 10
    for i, response in enumerate(responses):
        if response.status_code == 200:
            assert response.json()["outputs"] == [2 * i]
    assert any(-1 in call and len(call) > 1 for call in model.calls), "the -1 shared a batch"


def _occupy(
    server: ThreadedServer, model: RecordingModel, inputs: list[Any] | None = None
) -> threading.Thread:
    """Start one slow request and return once the model is busy with it."""
    thread = threading.Thread(
        target=httpx.post,
        args=(f"{server.url}/models/m/predict",),
        kwargs={"json": {"inputs": inputs or ["first"]}, "timeout": 30},
    )
    thread.start()
    assert model.started.wait(10)
    return thread


def test_a_full_queue_answers_503_with_retry_after_at_once(serve: Any) -> None:
    model = RecordingModel(delay=1.0)
    server = serve(model, max_queue=2)
    busy = _occupy(server, model)

    async def overflow() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            queued = asyncio.ensure_future(
                client.post("/models/m/predict", json={"inputs": ["a", "b"]})
            )
            await asyncio.sleep(0.2)  # let it take the two places in the queue
            started = time.perf_counter()
            rejected = await client.post("/models/m/predict", json={"inputs": ["c"]})
            assert time.perf_counter() - started < 0.5, "refused at once, not after waiting"
            v2 = await client.post("/v2/models/m/infer", content=b"not even read")
            return [await queued, rejected, v2]

    accepted, rejected, v2 = asyncio.run(overflow())
    busy.join()
    assert accepted.status_code == 200
    assert rejected.status_code == 503
    assert rejected.headers["Retry-After"] == "1"
    assert "overloaded" in rejected.json()["error"]
    assert rejected.json()["request_id"] == rejected.headers["x-request-id"]
    assert "c" not in model.seen
    # The Open Inference Protocol's route is refused the same way, in its own error shape,
    # before its body is even parsed.
    assert v2.status_code == 503
    assert set(v2.json()) == {"error"}
    refusals = httpx.get(f"{server.url}/metrics").text
    assert 'loadonce_requests_total{model="m",route="/models/{name}/predict",status="503"} 1.0' in (
        refusals
    )


def test_an_expired_deadline_is_504_and_the_model_never_sees_the_request(serve: Any) -> None:
    model = RecordingModel(delay=0.6)
    server = serve(model)
    busy = _occupy(server, model)
    late = httpx.post(
        f"{server.url}/models/m/predict",
        json={"inputs": ["late"]},
        headers={"X-Request-Timeout": "0.1"},
    )
    busy.join()
    time.sleep(0.2)  # the model is free again: had it been queued still, it would run now
    assert late.status_code == 504
    assert "deadline" in late.json()["error"]
    assert "late" not in model.seen


def test_the_model_timeout_applies_without_a_header(serve: Any) -> None:
    model = RecordingModel(delay=0.6)
    server = serve(model, timeout_s=0.2)
    busy = _occupy(server, model)
    response = httpx.post(f"{server.url}/models/m/predict", json={"inputs": ["late"]})
    busy.join()
    assert response.status_code == 504


def test_a_bad_timeout_header_is_422(serve: Any) -> None:
    server = serve(RecordingModel())
    response = httpx.post(
        f"{server.url}/models/m/predict", json={"inputs": [1]}, headers={"X-Request-Timeout": "-1"}
    )
    assert response.status_code == 422
    assert "X-Request-Timeout" in response.json()["error"]


def test_a_disconnected_clients_request_never_reaches_the_model(serve: Any) -> None:
    model = RecordingModel(delay=0.6)
    server = serve(model)
    busy = _occupy(server, model)
    with pytest.raises(httpx.ReadTimeout):
        # The client gives up (and closes its connection) while its request is queued.
        httpx.post(f"{server.url}/models/m/predict", json={"inputs": ["gone"]}, timeout=0.2)
    busy.join()
    time.sleep(0.3)
    assert "gone" not in model.seen
    assert model.seen == ["first"]


def test_batched_sklearn_predictions_equal_unbatched() -> None:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    estimator = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    spec = loadonce.ModelSpec(
        name="m",
        loader=lambda: estimator,
        batching={"max_batch_size": 16},
        concurrency="serialized",
    )
    with ThreadedServer(loadonce.create_app([spec])) as server:
        rows = iris.data[::5].tolist()
        responses = asyncio.run(_post_all(server.url, [{"inputs": row} for row in rows]))
    assert [r.json()["outputs"][0] for r in responses] == estimator.predict(iris.data[::5]).tolist()


def test_sigterm_drains_every_accepted_request(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "slow"\nloader = "tests.loaders:slow_echo"\n')
    env = cli_env(tmp_path, {"LOADONCE_TEST_CALL_LOG": str(calls), "LOADONCE_TEST_DELAY": "0.2"})
    server = start_cli([str(config)], tmp_path, env=env)
    wait_ready(server)
    results: list[httpx.Response] = []

    def send(i: int) -> None:
        results.append(
            httpx.post(f"{server.url}/models/slow/predict", json={"inputs": [i]}, timeout=60)
        )

    senders = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for sender in senders:
        sender.start()
    wait_until(lambda: calls.exists() and calls.read_text().strip() != "", 10, "the first call")
    time.sleep(0.1)  # every request has been accepted; most are still queued
    assert stop(server) == 0
    for sender in senders:
        sender.join()
    # Serialized at 0.2 s a call, most were still queued at SIGTERM: all were answered.
    assert sorted(r.json()["outputs"][0] for r in results) == list(range(8))
    assert all(r.status_code == 200 for r in results)
    assert "finishing accepted requests" in server.log()


def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once(serve: Any) -> None:
    model = RecordingModel(delay=0.3)
    server = serve(model, timeout_s=2.0)
    url = f"{server.url}/models/m/predict"
    assert httpx.post(url, json={"inputs": ["pace"]}).status_code == 200  # 0.3 s per call
    model.started.clear()
    busy = _occupy(server, model)  # busy: an idle model would admit it
    started = time.perf_counter()
    refused = httpx.post(url, json={"inputs": ["x", "y"]}, headers={"X-Request-Timeout": "0.5"})
    assert time.perf_counter() - started < 0.45, "refused at admission, not at its deadline"
    busy.join()
    assert refused.status_code == 503
    assert "past this request's deadline" in refused.json()["error"]
    assert "x" not in model.seen
    # With time enough, the same request is admitted.
    assert httpx.post(url, json={"inputs": ["x", "y"]}).status_code == 200


def test_an_idle_model_admits_even_after_one_slow_call(serve: Any) -> None:
    model = RecordingModel(delay=0.0, first_delay=0.8)
    server = serve(model)
    url = f"{server.url}/models/m/predict"
    assert httpx.post(url, json={"inputs": ["slow"]}).status_code == 200  # pace now 0.8 s
    # The model is idle: a request whose deadline is shorter than that pace is still
    # admitted (and, the model being fast again, answered), so the pace can recover.
    for _ in range(3):
        response = httpx.post(url, json={"inputs": ["x"]}, headers={"X-Request-Timeout": "0.5"})
        assert response.status_code == 200
