"""The event loop never runs inference, and each policy bounds how calls enter a model."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx2 as httpx
import pytest

import loadonce
from tests.servers import ThreadedServer


class OverlapTracker:
    """Shared by every instance of a model: how many calls were inside predict at once."""

    def __init__(self, delay: float, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate  # when given, each call waits for the test to open it
        self.active = 0
        self.max_active = 0
        self.max_active_per_instance: dict[int, int] = {}
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def make_instance(self) -> Any:
        tracker = self
        active_here = 0

        def predict(batch: list[Any]) -> list[Any]:
            nonlocal active_here
            with tracker._lock:
                tracker.active += 1
                active_here += 1
                tracker.max_active = max(tracker.max_active, tracker.active)
                key = id(predict)
                tracker.max_active_per_instance[key] = max(
                    tracker.max_active_per_instance.get(key, 0), active_here
                )
                tracker.threads.add(threading.get_ident())
            if tracker.gate is not None:
                tracker.gate.wait(30)
            time.sleep(tracker.delay)
            with tracker._lock:
                tracker.active -= 1
                active_here -= 1
            return list(batch)

        return predict


async def _fire(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(
            *(client.post("/models/m/predict", json={"inputs": [i]}) for i in range(count))
        )


def _serve_and_fire(concurrency: str, tracker: OverlapTracker, count: int = 50) -> None:
    spec = loadonce.ModelSpec(name="m", loader=tracker.make_instance, concurrency=concurrency)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        responses = asyncio.run(_fire(server.url, count))
    assert [r.status_code for r in responses] == [200] * count
    # Each caller got its own example back, not a neighbour's.
    assert [r.json()["outputs"] for r in responses] == [[i] for i in range(count)]


def test_serialized_never_enters_the_model_twice_at_once() -> None:
    tracker = OverlapTracker(delay=0.005)
    _serve_and_fire("serialized", tracker)
    assert tracker.max_active == 1
    assert threading.get_ident() not in tracker.threads


def test_pool_uses_at_most_n_instances_each_by_one_call_at_a_time() -> None:
    tracker = OverlapTracker(delay=0.05)
    _serve_and_fire("pool:3", tracker)
    assert len(tracker.max_active_per_instance) == 3, "all three instances served"
    assert max(tracker.max_active_per_instance.values()) == 1
    # 50 requests of 50 ms each, all at once: three instances run side by side.
    assert tracker.max_active == 3


def test_shared_runs_calls_concurrently_up_to_its_thread_limit() -> None:
    tracker = OverlapTracker(delay=0.05)
    _serve_and_fire("shared:4", tracker)
    assert len(tracker.max_active_per_instance) == 1
    assert tracker.max_active == 4


def test_livez_answers_while_a_predict_call_runs() -> None:
    started = threading.Event()
    release = threading.Event()
    finished = threading.Event()

    def load() -> Any:
        def predict(batch: list[Any]) -> list[Any]:
            started.set()
            release.wait(30)  # predicts until the test has its answer from /livez
            finished.set()
            return list(batch)

        return predict

    spec = loadonce.ModelSpec(name="slow", loader=load)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        result: dict[str, Any] = {}

        def call_slow() -> None:
            result["response"] = httpx.post(
                f"{server.url}/models/slow/predict", json={"inputs": [1]}, timeout=30
            )

        caller = threading.Thread(target=call_slow)
        caller.start()
        assert started.wait(10)
        before = time.monotonic()
        live = httpx.get(f"{server.url}/livez", timeout=2)
        answered_in = time.monotonic() - before
        assert live.status_code == 200
        assert not finished.is_set(), "livez answered while the model was still predicting"
        assert answered_in < 1.0
        release.set()
        caller.join(30)
    assert result["response"].status_code == 200


@pytest.mark.parametrize("text", ["pool", "pool:0", "serialized:2", "threads", "shared:x"])
def test_a_bad_concurrency_policy_is_refused_with_the_choices(text: str) -> None:
    with pytest.raises(ValueError, match=r"concurrency|pool|serialized|size"):
        loadonce.ModelSpec(name="m", loader=lambda: None, concurrency=text)


def test_a_call_that_timed_out_still_holds_its_pool_instance_until_it_returns() -> None:
    gate = threading.Event()
    tracker = OverlapTracker(delay=0.0, gate=gate)
    spec = loadonce.ModelSpec(name="m", loader=tracker.make_instance, concurrency="pool:1")
    with ThreadedServer(loadonce.create_app([spec])) as server:

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                # The first call runs until the gate opens; its caller gives up at once.
                late = await client.post(
                    "/models/m/predict", json={"inputs": [1]}, headers={"X-Request-Timeout": "0.1"}
                )
                follow = asyncio.ensure_future(
                    client.post("/models/m/predict", json={"inputs": [2]})
                )
                await asyncio.sleep(0.05)  # the follow-up is queued behind the running call
                gate.set()
                return [late, await follow]

        try:
            late, follow = asyncio.run(run())
        finally:
            gate.set()
    assert late.status_code == 504
    assert follow.status_code == 200
    # The second call waited for the instance: never two calls in it at once.
    assert max(tracker.max_active_per_instance.values()) == 1
