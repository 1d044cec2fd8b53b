"""A reload of a model that generates: the new version serves at once, streams begun on the
old one run to their end on it, and neither holds the reload (nor the model's next change) up
for as long as they last."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx2 as httpx
import openai

import loadonce
from loadonce import GenerationRequest
from tests.servers import ThreadedServer, wait_until


class Held(loadonce.Predictor):
    """Yields "first ", then waits for ``go`` (at most 30 s) before "last"."""

    max_new_tokens = 10
    go = threading.Event()

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield "first "
        self.go.wait(timeout=30)
        yield "last"


def test_a_reload_does_not_wait_for_the_streams_of_the_version_it_replaces() -> None:
    """The reload's answer waited for every stream of the old version to end: one client
    reading a long generation held the reload (with several workers, every worker's after
    it) for as long as it read."""
    Held.go.clear()
    spec = loadonce.ModelSpec(name="held", loader=Held)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        pieces: list[str] = []
        stream = client.completions.create(model="held", prompt="x", stream=True)
        reader = threading.Thread(
            target=lambda: pieces.extend(c.choices[0].text for c in stream if c.choices)
        )
        reader.start()
        try:
            wait_until(lambda: pieces == ["first "], 10, "the stream's first piece")
            started = time.monotonic()
            reload = httpx.post(f"{server.url}/v2/repository/models/held/load", timeout=10)
            took = time.monotonic() - started
            assert reload.status_code == 200, reload.text
            assert took < 5, f"the reload waited {took:.1f} s for the old version's stream"
            assert reader.is_alive()
            # The new version serves meanwhile.
            Held.go.set()
            answer = client.completions.create(model="held", prompt="x")
            assert answer.choices[0].text == "first last"
        finally:
            Held.go.set()
            reader.join(timeout=20)
        # Nothing lost: the stream begun before the reload ended whole, on the old version.
        assert "".join(pieces) == "first last"


def test_an_unload_ends_the_streams_a_reload_left_running_within_its_timeout() -> None:
    """At shutdown (an unload with the drain timeout), the streams of a version a reload
    replaced end too: their last event says the model was unloaded."""

    async def scenario() -> tuple[list[Any], float]:
        Held.go.clear()
        model = loadonce.Model(loadonce.ModelSpec(name="held", loader=Held))
        await model.load()
        events: list[Any] = []

        async def read() -> None:
            with contextlib.suppress(loadonce.ModelNotReadyError):
                async with contextlib.aclosing(model.generate(GenerationRequest(prompt="x"))) as s:
                    async for event in s:
                        events.append(event)
            events.append("ended")

        reading = asyncio.create_task(read())
        while not events:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(model.load(), 5)  # the reload, not waiting for the stream
        started = time.monotonic()
        try:
            await model.unload(timeout=0.3)
            took = time.monotonic() - started
            await asyncio.wait_for(reading, 5)
        finally:
            Held.go.set()
        return events, took

    events, took = asyncio.run(scenario())
    assert took < 5, f"the unload waited {took:.1f} s"
    assert events == [loadonce.Delta("first "), "ended"]


class HeldInACycle(Held):
    """Held, in a reference cycle with itself: freed only by the garbage collector."""

    made: ClassVar[list[weakref.ref[HeldInACycle]]] = []

    def __init__(self) -> None:
        self.me = self
        HeldInACycle.made.append(weakref.ref(self))


def test_a_replaced_version_held_in_cycles_is_freed_after_its_last_stream() -> None:
    """The collector keeps a served app's objects frozen, and a model change thaws and
    collects them; the version a reload replaced is let go only after its last stream, and
    its reference cycles would stay frozen, with its memory, until the next model change."""
    Held.go.clear()
    HeldInACycle.made.clear()
    spec = loadonce.ModelSpec(name="cycle", loader=HeldInACycle)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        body = {"prompt": "x", "stream": True}
        with httpx.stream("POST", f"{server.url}/models/cycle/generate", json=body) as stream:
            lines = stream.iter_lines()
            assert next(lines) == 'data: {"text":"first "}'
            reload = threading.Thread(
                target=httpx.post, args=(f"{server.url}/v2/repository/models/cycle/load",)
            )
            reload.start()
            wait_until(lambda: len(HeldInACycle.made) == 2, 10, "the new version loaded")
            Held.go.set()
            assert "last" in "".join(lines)
            reload.join(timeout=20)
        old = HeldInACycle.made[0]
        wait_until(lambda: old() is None, 10, "the replaced version freed")


def test_the_queue_figures_count_every_version_a_reload_left_running() -> None:
    """Each generation queue set the model's queue gauge to its own depth: while a reload's
    old version still held requests, /metrics and GET /models showed whichever queue changed
    last (and the old queue's last 0 hid the new one's), never what the worker held."""
    Held.go.clear()
    spec = loadonce.ModelSpec(name="held", loader=Held)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        pieces: list[list[str]] = [[], []]
        answers: list[str] = []

        def stream(into: list[str]) -> None:
            chunks = client.completions.create(model="held", prompt="x", stream=True)
            into.extend(c.choices[0].text for c in chunks if c.choices)

        def whole() -> None:
            answer = client.completions.create(model="held", prompt="x")
            answers.append(answer.choices[0].text or "")

        def queue() -> tuple[int, int]:
            shown = httpx.get(f"{server.url}/models/held").json()["queue"]
            return shown["queued_examples"], shown["generating"]

        def gauge() -> str:
            metrics = httpx.get(f"{server.url}/metrics").text
            return next(line for line in metrics.splitlines() if "queue_examples{" in line)

        readers = [
            threading.Thread(target=stream, args=(pieces[0],)),
            threading.Thread(target=whole),
            threading.Thread(target=stream, args=(pieces[1],)),
            threading.Thread(target=whole),
        ]
        try:
            # The old version: one generating (its one place), one waiting behind it.
            readers[0].start()
            wait_until(lambda: pieces[0] == ["first "], 10, "the first stream generating")
            readers[1].start()
            wait_until(lambda: queue() == (1, 1), 10, "one request waiting")
            reload = httpx.post(f"{server.url}/v2/repository/models/held/load", timeout=10)
            assert reload.status_code == 200, reload.text
            # The new version: the same again.
            readers[2].start()
            wait_until(lambda: pieces[1] == ["first "], 10, "the new version generating")
            readers[3].start()
            wait_until(lambda: queue() == (2, 2), 10, "both versions' requests counted")
            assert gauge() == 'loadonce_queue_examples{model="held"} 2.0'
        finally:
            Held.go.set()
            for reader in readers:
                if reader.is_alive() or reader.ident is not None:
                    reader.join(timeout=20)
        assert answers == ["first last"] * 2
        wait_until(lambda: queue() == (0, 0), 10, "the old version retired")
        assert gauge() == 'loadonce_queue_examples{model="held"} 0.0'


def test_a_hung_step_of_a_replaced_version_still_counts_as_hung() -> None:
    """Each generation queue told the model its own count of hung steps, overwriting the
    other's: a step hung in the old version and one in the new counted as one, and the
    first to return said the model healthy while the other still hung."""

    async def scenario() -> list[int]:
        Held.go.clear()
        spec = loadonce.ModelSpec(name="held", loader=Held, hang_timeout_s=0.2)
        model = loadonce.Model(spec)
        await model.load()
        counted: list[int] = []
        streams = []
        try:
            for _ in range(2):  # one generation in each version, its step hung
                stream = model.generate(GenerationRequest(prompt="x"))
                streams.append(stream)
                assert await anext(stream) == loadonce.Delta("first ")
                await asyncio.wait_for(_hung(model, len(streams)), 5)
                counted.append(model.hung_calls)
                if len(streams) == 1:
                    await asyncio.wait_for(model.load(), 5)  # the reload
        finally:
            Held.go.set()
            for stream in streams:
                await stream.aclose()
            await model.unload(timeout=5)
        counted.append(model.hung_calls)
        return counted

    assert asyncio.run(scenario()) == [1, 2, 0]


async def _hung(model: loadonce.Model, count: int) -> None:
    while model.hung_calls < count:
        await asyncio.sleep(0.02)
