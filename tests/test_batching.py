"""Dynamic batching, bounded queues, deadlines and disconnects, end to end on a real server.

What a batch holds and when it starts, admission and error isolation are tested in the loop,
without a server (tests/test_batcher_in_loop.py); here, that they work through the routes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest

import loadonce
from loadonce.server.http_protocol import guarded_protocol
from tests.servers import ThreadedServer, cli_env, start_cli, stop, wait_ready, wait_until


class RecordingModel:
    """Doubles each number; records every call's batch. With a ``gate``, each call waits for
    the test to open it (the model stays busy exactly as long as a test needs)."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate
        self.calls: list[list[Any]] = []
        self.started = threading.Event()
        self._lock = threading.Lock()

    def predict(self, batch: list[Any]) -> list[Any]:
        with self._lock:
            self.calls.append(list(batch))
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        time.sleep(self.delay)
        return [2 * x for x in batch]

    @property
    def seen(self) -> list[Any]:
        return [x for call in self.calls for x in call]


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # whatever happened, no model thread is left waiting


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadedServer] = []

    def start(
        model: RecordingModel, http: type[asyncio.Protocol] | str = "auto", **spec: Any
    ) -> ThreadedServer:
        app = loadonce.create_app([loadonce.ModelSpec(name="m", loader=lambda: model, **spec)])
        server = ThreadedServer(app, http=http)
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


def _queued(server: ThreadedServer) -> float:
    """The model's queue, in examples, from /metrics."""
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('loadonce_queue_examples{model="m"}'):
            return float(line.split()[-1])
    return 0.0


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


def test_a_full_queue_answers_503_with_retry_after_at_once(
    serve: Any, gate: threading.Event
) -> None:
    model = RecordingModel(gate=gate)
    server = serve(model, max_queue=2)
    busy = _occupy(server, model)

    async def overflow() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            queued = asyncio.ensure_future(
                client.post("/models/m/predict", json={"inputs": ["a", "b"]})
            )
            while _queued(server) < 2:  # it takes the two places in the queue
                await asyncio.sleep(0.01)
            # Refused while the model is still busy: at once, not after waiting.
            rejected = await client.post("/models/m/predict", json={"inputs": ["c"]})
            v2 = await client.post("/v2/models/m/infer", content=b"not even read")
            gate.set()
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


def test_the_model_timeout_applies_without_a_header(serve: Any, gate: threading.Event) -> None:
    model = RecordingModel(gate=gate)
    server = serve(model, timeout_s=0.2)
    busy = _occupy(server, model)
    response = httpx.post(f"{server.url}/models/m/predict", json={"inputs": ["late"]})
    gate.set()
    busy.join()
    assert response.status_code == 504
    assert "deadline" in response.json()["error"]
    # Answered 504 while queued: it left the queue and never reaches the model.
    assert httpx.post(f"{server.url}/models/m/predict", json={"inputs": [1]}).status_code == 200
    assert "late" not in model.seen


def test_a_bad_timeout_header_is_422(serve: Any) -> None:
    server = serve(RecordingModel())
    response = httpx.post(
        f"{server.url}/models/m/predict", json={"inputs": [1]}, headers={"X-Request-Timeout": "-1"}
    )
    assert response.status_code == 422
    assert "X-Request-Timeout" in response.json()["error"]


# uvicorn's own protocol (the route watches ``receive`` for the disconnect) and `loadonce
# serve`'s (its protocol tells the waiting route when the connection is lost).
@pytest.mark.parametrize("http", ["auto", "loadonce serve"])
def test_a_disconnected_clients_request_never_reaches_the_model(
    serve: Any, gate: threading.Event, http: str
) -> None:
    model = RecordingModel(gate=gate)
    protocol = (
        guarded_protocol(
            header_timeout_s=10, body_timeout_s=30, max_header_bytes=65536, max_header_fields=100
        )
        if http == "loadonce serve"
        else http
    )
    server = serve(model, http=protocol)
    busy = _occupy(server, model)
    with pytest.raises(httpx.ReadTimeout):
        # The client gives up (and closes its connection) while its request is queued.
        httpx.post(f"{server.url}/models/m/predict", json={"inputs": ["gone"]}, timeout=0.2)
    # The server notices the disconnect while the model is still busy: the request leaves.
    wait_until(lambda: _queued(server) == 0, 10, "the request to leave the queue")
    gate.set()
    busy.join()
    # Had it been queued still, it would have run before this one.
    assert httpx.post(f"{server.url}/models/m/predict", json={"inputs": [1]}).status_code == 200
    assert model.seen == ["first", 1]


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
    env = cli_env(tmp_path, {"LOADER_TEST_CALL_LOG": str(calls), "LOADER_TEST_DELAY": "0.2"})
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

    def accepted() -> int:
        # Called (a line each in the call log) or waiting in the model's queue. Under load a
        # sender may not have connected yet: a SIGTERM then would refuse it, not lose it.
        queue = httpx.get(f"{server.url}/models/slow", timeout=10).json()["queue"]
        return len(calls.read_text().split()) + int(queue["queued_examples"])

    wait_until(lambda: accepted() >= 8, 30, "every request accepted")
    assert stop(server) == 0
    for sender in senders:
        sender.join()
    # Serialized at 0.2 s a call, most were still queued at SIGTERM: all were answered.
    assert sorted(r.json()["outputs"][0] for r in results) == list(range(8))
    assert all(r.status_code == 200 for r in results)
    assert "finishing accepted requests" in server.log()


class _WritesIntoItsInputs(loadonce.Predictor):
    """Sums each example, then zeroes it in place (as a model normalizing its input in place
    does), and raises if any example held a negative number. The first call waits for
    ``gate``, so that the requests sent meanwhile share the next call."""

    def __init__(self, gate: threading.Event, as_arrays: bool) -> None:
        self.gate = gate
        self.as_arrays = as_arrays
        self.batch_sizes: list[int] = []
        self.started = threading.Event()

    def prepare(self, examples: list[Any]) -> Any:
        return [np.asarray(e, dtype=float) for e in examples] if self.as_arrays else examples

    def predict(self, batch: Any) -> list[float]:
        if not self.started.is_set():
            self.started.set()
            assert self.gate.wait(30)
        self.batch_sizes.append(len(batch))
        sums = [float(np.sum(np.asarray(_values(e), dtype=float))) for e in batch]
        for example in batch:
            _zero(example)
        if min(sums) < 0:
            raise ValueError("a negative number")
        return sums


def _values(example: Any) -> Any:
    return list(example.values()) if isinstance(example, dict) else example


def _zero(example: Any) -> None:
    if isinstance(example, np.ndarray):
        example[...] = 0
    elif isinstance(example, list):
        example[:] = [0] * len(example)
    elif isinstance(example, dict):
        example.update(dict.fromkeys(example, 0))


@pytest.mark.parametrize(
    ("examples", "as_arrays"),
    [
        ([[1, 2], [3, 4], [-1, -1], [5, 6]], False),
        ([{"a": 1, "b": 2}, {"a": 3, "b": 4}, {"a": -1, "b": -1}, {"a": 5, "b": 6}], False),
        ([[1, 2], [3, 4], [-1, -1], [5, 6]], True),
    ],
    ids=["lists", "dicts", "arrays"],
)
def test_a_model_that_writes_into_its_inputs_and_fails_leaves_its_neighbours_answers(
    serve: Any, gate: threading.Event, examples: list[Any], as_arrays: bool
) -> None:
    """A batch that fails is predicted again one request at a time: the model had zeroed the
    examples it was given, the retries were given the zeros, and every request of the batch,
    the culprit's too, was answered 200 with 0."""
    model = _WritesIntoItsInputs(gate, as_arrays)
    server = serve(model, batching={"max_batch_size": 8})
    first = threading.Thread(
        target=httpx.post,
        args=(f"{server.url}/models/m/predict",),
        kwargs={"json": {"inputs": [[0, 0]]}, "timeout": 30},
    )
    first.start()
    assert model.started.wait(10)

    async def send_while_busy() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            sent = [
                asyncio.ensure_future(client.post("/models/m/predict", json={"inputs": [e]}))
                for e in examples
            ]
            await asyncio.to_thread(
                wait_until, lambda: _queued(server) == len(examples), 10, "the queue"
            )
            gate.set()
            return await asyncio.gather(*sent)

    answers = asyncio.run(send_while_busy())
    first.join()
    assert len(examples) in model.batch_sizes, "the requests shared a call"
    for example, answer in zip(examples, answers, strict=True):
        total = sum(_values(example))
        if total < 0:
            assert answer.status_code == 500
            assert answer.json()["error"].startswith("the model raised ValueError")
        else:
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == [float(total)]
