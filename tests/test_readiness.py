"""/readyz tells the truth: never 200 before every model is loaded and warmed up."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx2 as httpx

import loadonce
from tests.servers import ThreadedServer


def test_readyz_is_never_200_before_a_slow_load_completes_then_is() -> None:
    loaded_at: list[float] = []

    def slow_loader() -> Any:
        time.sleep(1.5)
        loaded_at.append(time.monotonic())
        return lambda batch: batch

    server = ThreadedServer(
        loadonce.create_app([loadonce.ModelSpec(name="slow", loader=slow_loader)])
    )
    answers: list[tuple[float, int | None]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                status: int | None = httpx.get(f"{server.url}/readyz", timeout=1).status_code
            except httpx.TransportError:
                status = None  # refused: nothing listens until every model has loaded
            answers.append((time.monotonic(), status))
            if status == 200:
                return
            time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    server.start(wait=False)
    try:
        poller.join(30)
        stop.set()
        assert loaded_at, "the loader finished"
        assert answers[-1][1] == 200, "ready once loaded"
        first_ready = min(t for t, status in answers if status == 200)
        assert first_ready >= loaded_at[0]
        assert len(answers) > 10, "readiness was probed throughout the load"
        assert all(status != 200 for t, status in answers if t < loaded_at[0])
        body = httpx.get(f"{server.url}/readyz").json()
        assert body["ready"] is True
        assert body["models"] == {"slow": "ready"}
    finally:
        stop.set()
        server.stop()
