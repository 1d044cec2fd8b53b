"""A generating model's queue: its depth is shown where a batcher's is (GET /models/{name},
/metrics), and its max_queue counts the requests waiting beyond the batch's free places."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx

import loadonce
from loadonce.core.generation import GenerationRequest
from tests.servers import ThreadedServer, wait_until


class SlowWords(loadonce.Predictor):
    """Generates the prompt's words back, a word every 0.15 s."""

    max_new_tokens = 64

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        for word in (request.prompt or "").split():
            time.sleep(0.15)
            yield word + " "


PROMPT = " ".join(["word"] * 14)  # 2 s of generating


def _complete(url: str, statuses: list[int], prompt: str = PROMPT) -> None:
    body = {"model": "slow", "prompt": prompt, "max_tokens": 64}
    statuses.append(httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code)


def test_a_generating_models_queue_is_shown_and_a_free_place_is_not_queued() -> None:
    spec = loadonce.ModelSpec(
        name="slow", loader=SlowWords, batching={"max_batch_size": 2}, max_queue=2
    )
    with ThreadedServer(loadonce.create_app([spec])) as server:
        statuses: list[int] = []
        first = threading.Thread(target=_complete, args=(server.url, statuses))
        first.start()

        def queue() -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(f"{server.url}/models/slow").json()["queue"]
            return found

        wait_until(lambda: queue()["generating"] == 1, 10, "the first request generating")
        # One place free in the batch and two in the queue: a burst of three fits. (The
        # three were counted as queued: the third was refused with 503.)
        burst = [threading.Thread(target=_complete, args=(server.url, statuses)) for _ in range(3)]
        for thread in burst:
            thread.start()
        wait_until(
            lambda: (queue()["generating"], queue()["queued_examples"]) == (2, 2),
            10,
            "two requests generating, two queued",
        )
        shown = queue()
        assert (shown["max_queue"], shown["max_batch_size"]) == (2, 2)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'loadonce_queue_examples{model="slow"} 2.0' in metrics
        # Full now: the next one is refused at once.
        refused = httpx.post(
            f"{server.url}/v1/completions", json={"model": "slow", "prompt": "x"}, timeout=10
        )
        # OpenAI's error body, which the client reads, with the retry hint; counted.
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        error = refused.json()["error"]
        assert error["type"] == "server_error"
        assert "2 requests are queued (max_queue 2)" in error["message"]
        counted = 'loadonce_requests_total{model="slow",route="/v1/completions",status="503"} 1.0'
        assert counted in httpx.get(f"{server.url}/metrics").text
        for thread in [first, *burst]:
            thread.join(60)
        assert statuses == [200, 200, 200, 200]
        assert queue()["queued_examples"] == 0


def test_a_stream_whose_client_stops_reading_still_ends_at_its_deadline(tmp_path: Any) -> None:
    """The deadline was checked only where the stream is read: a client that stopped
    reading escaped it, its generation went on to max_tokens, and the request behind it
    waited all that time (32 s)."""
    import json
    import socket

    from tests.servers import serving

    with serving(["tests.loaders:endless"], tmp_path) as server:
        body = json.dumps(
            {"model": "endless", "prompt": "go", "max_tokens": 1_000_000, "stream": True}
        ).encode()
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nX-Request-Timeout: 1\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            time.sleep(0.3)  # reading nothing from now on
            started = time.monotonic()
            behind = httpx.post(
                f"{server.url}/v1/completions",
                json={"model": "endless", "prompt": "go", "max_tokens": 3},
                timeout=120,
            )
            waited = time.monotonic() - started
        assert behind.status_code == 200, behind.text
        assert waited < 10, f"the request behind it waited {waited:.1f} s"


# Each generate route, its body, and whether it streams: admission is the queue's, whichever
# route feeds it.
_ROUTES = [
    ("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 3}),
    ("/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 3, "stream": True}),
    ("/v2/models/slow/generate", {"text_input": "x", "max_tokens": 3}),
    ("/v2/models/slow/generate_stream", {"text_input": "x", "max_tokens": 3}),
    ("/models/slow/generate", {"prompt": "x", "stream": False}),
    ("/models/slow/generate", {"prompt": "x", "stream": True}),
]


def test_a_generation_that_cannot_start_before_its_deadline_is_refused_at_once() -> None:
    """A generation request with a deadline was queued whatever the queue held, and failed
    with a 504 when its deadline passed, after holding a place for all that time. At the
    queue's measured pace it is refused at once now, as the batcher refuses: 503 with the
    Retry-After after which it would fit, or 504 (never retry) when even one step takes
    longer than its deadline; a deadline that fits is served."""
    spec = loadonce.ModelSpec(name="slow", loader=SlowWords, max_queue=8)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        statuses: list[int] = []
        _complete(server.url, statuses)  # measures the pace: 0.15 s a step, 2.1 s a sequence
        # 9 s of generating ahead of the requests below (the estimate still reads 2.1 s, the
        # pace measured): they all meet a busy model, however slowly this machine runs them.
        long_prompt = " ".join(["word"] * 60)
        busy = threading.Thread(target=_complete, args=(server.url, statuses, long_prompt))
        busy.start()
        wait_until(
            lambda: httpx.get(f"{server.url}/models/slow").json()["queue"]["generating"] == 1,
            10,
            "a generation holding the model's one place",
        )
        try:
            for path, body in _ROUTES:
                for timeout, status in (("1", 503), ("0.05", 504)):
                    started = time.monotonic()
                    refused = httpx.post(
                        f"{server.url}{path}",
                        json=body,
                        headers={"X-Request-Timeout": timeout},
                        timeout=10,
                    )
                    took = time.monotonic() - started
                    where = f"{path} {body} within {timeout} s"
                    assert refused.status_code == status, (where, refused.text)
                    # At once: not after its deadline (the message says which refusal).
                    assert took < 2, f"{where}: refused after {took:.2f} s, not at once"
                    if status == 503:
                        # It fits once the queue is 1.2 s shorter (2.25 s of wait, 1 s left).
                        assert refused.headers["retry-after"] == "2", where
                        assert "past this request's deadline" in refused.text, where
                    else:
                        assert refused.headers["x-should-retry"] == "false", where
                        assert "one step of its generation" in refused.text, where
            # A deadline the queue can meet is served, after the generation ahead of it.
            served = httpx.post(
                f"{server.url}/v1/completions",
                json={"model": "slow", "prompt": "a b", "max_tokens": 3},
                headers={"X-Request-Timeout": "20"},
                timeout=30,
            )
            assert served.status_code == 200, served.text
            assert served.json()["choices"][0]["text"] == "a b "
        finally:
            busy.join(60)
        assert statuses == [200, 200]
        assert httpx.get(f"{server.url}/models/slow").json()["queue"]["queued_examples"] == 0


def test_clients_that_go_away_while_queued_free_their_places_at_once() -> None:
    """A streaming request of the generate routes (/models/{name}/generate,
    /v2/.../generate_stream) whose client went away while it waited kept its place in the
    queue until its turn came (a full queue refused others meanwhile), and its first token
    was made for nobody. Every route, streaming or not, frees it at once now."""
    import json
    import socket

    spec = loadonce.ModelSpec(name="slow", loader=SlowWords, max_queue=len(_ROUTES))
    with ThreadedServer(loadonce.create_app([spec])) as server:
        statuses: list[int] = []
        # 9.6 s of generating (its 64 tokens): the places must be freed well before it ends,
        # however slowly this machine queues the requests.
        long_prompt = " ".join(["word"] * 64)
        busy = threading.Thread(target=_complete, args=(server.url, statuses, long_prompt))
        busy.start()

        def queued() -> int:
            found: int = httpx.get(f"{server.url}/models/slow").json()["queue"]["queued_examples"]
            return found

        wait_until(
            lambda: httpx.get(f"{server.url}/models/slow").json()["queue"]["generating"] == 1,
            10,
            "a generation holding the model's one place",
        )
        sockets = []
        try:
            for path, body in _ROUTES:
                data = json.dumps(body).encode()
                sock = socket.create_connection(("127.0.0.1", server.port))
                sockets.append(sock)
                sock.sendall(
                    b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % (path.encode(), len(data)) + data
                )
            wait_until(lambda: queued() == len(_ROUTES), 10, "every route's request queued")
            # Streaming and whole requests count alike in max_queue: full now.
            full = httpx.post(f"{server.url}{_ROUTES[1][0]}", json=_ROUTES[1][1], timeout=10)
            assert full.status_code == 503, full.text
        finally:
            for sock in sockets:
                sock.close()
        started = time.monotonic()
        wait_until(lambda: queued() == 0, 3, "the places of the clients gone freed")
        took = time.monotonic() - started
        assert busy.is_alive(), f"freed only when the generation ahead ended ({took:.1f} s)"
        metrics = httpx.get(f"{server.url}/metrics").text
        for route in ("/models/{name}/generate", "/v2/models/{model_name}/generate_stream"):
            assert f'route="{route}",status="499"' in metrics, route
        busy.join(60)
        assert statuses == [200]
