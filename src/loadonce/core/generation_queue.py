"""The generation queue of one model: continuous batching of token-by-token generation.

Sequences wait in a bounded queue, then join the engine's batch between two steps (only when
the batch is empty, for an engine that cannot take them mid-flight), and leave it as soon as
they end, their client goes away or their deadline passes: the model never spends a step on a
sequence nobody waits for. One driver task per model calls ``engine.advance`` in the model's
threads (under its concurrency policy, like a predict call) and hands each sequence's text to
its stream as the step returns, so a stream's first text leaves as soon as its token exists.
Stop strings are found here, over the text, whatever the engine.

A request with a deadline is admitted only if, at the queue's measured pace (the time of a
step, and how long a sequence holds its place in the batch), its first token can come before
that deadline: refused at once otherwise, as the batcher refuses (``_refuse_if_late``), rather
than holding a place in the queue only to fail late.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import math
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from loadonce.core.batcher import wrong_loop
from loadonce.core.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    LoadonceError,
    ModelNotReadyError,
    ModelRaisedError,
    QueueFullError,
    as_exception,
)
from loadonce.core.executors import Executor
from loadonce.core.generation import (
    Delta,
    Finished,
    FinishReason,
    GenerationEngine,
    GenerationRequest,
    Step,
    check_request,
    held_back,
)
from loadonce.core.observer import GenerationReport, ModelObserver

logger = logging.getLogger("loadonce")
# One step's outcome per sequence it advanced: its new text, or what it failed with.
_Outcomes = dict[int, Step | Exception]

__all__ = ["GenerationQueue"]

GenerationEvent = Delta | Finished


@dataclass(eq=False)
class _Sequence:
    id: int
    request: GenerationRequest
    arrived: float
    events: asyncio.Queue[GenerationEvent | BaseException] = field(default_factory=asyncio.Queue)
    # The text not yet sent, after the end of what was sent that a stop string may begin in;
    # ``emitted``: where the sent part ends in it.
    text: str = ""
    emitted: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: bool = False
    # When it joined the batch (the loop's time): how long it held its place, when it leaves.
    joined_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    # The client stopped waiting (went away, or its deadline passed).
    abandoned: bool = False
    # The loop's time past which nothing more is generated for it, whether its client reads
    # or not (one that stopped reading escaped its deadline: all of max_tokens was made).
    deadline: float | None = None
    done: bool = False


class GenerationQueue:
    """Schedules the generation requests of one loaded model on its engine."""

    def __init__(
        self,
        *,
        model: str,
        engine: GenerationEngine,
        executor: Executor,
        max_sequences: int,
        max_queue: int,
        static: bool = False,
        observer: ModelObserver | None = None,
        hang_timeout_s: float | None = None,
        on_hung_changed: Callable[[int], None] | None = None,
        on_queue_changed: Callable[[int], None] | None = None,
    ) -> None:
        self._model = model
        # A step of the engine's running past it: the model is unhealthy until it returns
        # (told through ``on_hung_changed``, as the batcher tells of a hung predict call).
        self._hang_timeout_s = hang_timeout_s
        self._on_hung_changed = on_hung_changed
        # Told its depth, instead of the observer (the model sums its queues' depths).
        self._on_queue_changed = on_queue_changed
        self._engine = engine
        self._executor = executor
        self._max_sequences = max_sequences
        self._max_queue = max_queue
        # Join only an empty batch: static batching (asked for, or all the engine can do).
        self._static = static or not engine.joins_mid_flight
        self._observer = observer
        self._ids = itertools.count()
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._active: dict[int, _Sequence] = {}
        # Sequences the engine still holds that ended here (a stop string): let go next step.
        self._leaving: set[int] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._driver: asyncio.Task[None] | None = None
        self._closed = False
        # Measured while generating, smoothed over recent ones (None until measured): the
        # seconds one step takes, and the seconds a sequence holds its place in the batch
        # (from joining it to leaving it). Together they say when a request queued now would
        # have its first token (``expected_wait``).
        self._seconds_per_step: float | None = None
        self._seconds_per_sequence: float | None = None
        # The app's loop, where it was made (while its model loaded): streams run there.
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    @property
    def engine(self) -> GenerationEngine:
        return self._engine

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def generating(self) -> int:
        return len(self._active)

    @property
    def max_queue(self) -> int:
        return self._max_queue

    @property
    def max_sequences(self) -> int:
        return self._max_sequences

    @property
    def seconds_per_step(self) -> float | None:
        return self._seconds_per_step

    def _free_places(self) -> int:
        """Places in the batch the next step can fill (none in a static batch running)."""
        if self._static and self._active:
            return 0
        return max(self._max_sequences - len(self._active), 0)

    def _place_frees_in(self) -> float | None:
        """Seconds, on average, until the batch has room for one more waiting sequence."""
        held = self._seconds_per_sequence
        if held is None:
            return None
        # A static batch takes the next ones only when its last sequence has ended.
        return held if self._static else held / self._max_sequences

    def refuse_if_full(self) -> None:
        """QueueFullError past ``max_queue`` waiting beyond the batch's free places: those
        who join at the next step are not queued (counted as queued, a burst onto a batch
        with room was refused, 200, 200, 503 with one place free and max_queue 2 empty)."""
        if self._closed:
            raise ModelNotReadyError(self._model, "unloading")
        if len(self._waiting) - self._free_places() >= self._max_queue:
            raise QueueFullError(
                self._model,
                len(self._waiting),
                self._max_queue,
                counted="requests",
                retry_after_s=self._place_frees_in(),
            )

    def expected_wait(self) -> float | None:
        """Seconds until a request queued now would have its first token, at the measured
        pace (None until measured): the places that must free before its turn, then the step
        it joins in."""
        step = self._seconds_per_step
        if step is None:
            return None
        places = len(self._waiting) + 1 - self._free_places()
        if places <= 0:
            return step  # it joins at the next step
        held = self._seconds_per_sequence
        if held is None:
            return None
        if self._static:  # whole batches run, one after the other
            return math.ceil(places / self._max_sequences) * held + step
        return places * held / self._max_sequences + step

    def _refuse_if_late(self, left: float) -> None:
        """Refuse, before it takes a place, a request whose first token could not come in the
        ``left`` seconds of its deadline at the measured pace: it would fail with a 504 after
        holding a place others could have used. A 503 with Retry-After (when the queue will
        be short enough), unless even one step takes longer than it has left: then waiting
        cannot help, and it is told so (``DeadlineTooShortError``, a 504)."""
        if not self._active and not self._waiting:
            # An idle model always admits: the pace is only measured while generating, and a
            # stale one (one slow step) could refuse forever.
            return
        wait = self.expected_wait()
        if wait is None or wait <= left:
            return
        step = self._seconds_per_step
        if step is not None and step > left:
            raise DeadlineTooShortError(
                self._model, left, step, call="step of its generation (its first token)"
            )
        raise QueueFullError(
            self._model,
            len(self._waiting),
            self._max_queue,
            expected_wait=wait,
            counted="requests",
            retry_after_s=wait - left,
        )

    def _waiting_changed(self) -> None:
        """The queue's depth, for /metrics and the model's description (as the batcher's)."""
        if self._on_queue_changed is not None:
            self._on_queue_changed(len(self._waiting))
        elif self._observer is not None:
            self._observer.queue_changed(self._model, len(self._waiting))

    async def stream(
        self, request: GenerationRequest, *, deadline: float | None, deadline_s: float | None
    ) -> AsyncGenerator[GenerationEvent, None]:
        """The request's text as it is generated (``Delta``s), then one ``Finished``.

        Before its first event: a request the model cannot take raises (``InvalidInputError``,
        ``QueueFullError``...), and a deadline reached raises ``DeadlineExceededError``; after
        it, a deadline ends the stream with ``Finished(reason="deadline")``. Closing the
        iterator early (a client that went away) takes the sequence out of the batch at the
        next step."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            raise RuntimeError(wrong_loop(self._model))
        self.refuse_if_full()
        check_request(request)
        self._engine.check(request)
        if deadline is not None:
            self._refuse_if_late(deadline - loop.time())
        sequence = _Sequence(next(self._ids), request, arrived=loop.time(), deadline=deadline)
        self._waiting.append(sequence)
        self._waiting_changed()
        self._idle.clear()
        self._start_driver()
        self._wake.set()
        # Counted as the batcher's requests are (the statistics' success and fail): a
        # generation that ended with its text, or failed (raised, its deadline passed, its
        # client left).
        ended_well = False
        try:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                try:
                    # What was generated before the deadline is sent, however late it is read.
                    if sequence.events.empty() and remaining is not None and remaining <= 0:
                        raise TimeoutError
                    async with asyncio.timeout(remaining):
                        event = await sequence.events.get()
                except TimeoutError:
                    if not sequence.events.empty():
                        continue  # an event came as the deadline did
                    if not sequence.started:
                        raise DeadlineExceededError(self._model, deadline_s) from None
                    # The driver lets it go (and reports it) at the next step.
                    sequence.abandoned = True
                    self._wake.set()
                    # The text held back for a stop string that did not come is the answer's.
                    held = sequence.text[sequence.emitted :]
                    if held:
                        yield Delta(held)
                    yield self._finish(sequence, "deadline", report=False)
                    return
                if isinstance(event, BaseException):
                    raise event
                if isinstance(event, Finished):
                    # Before it is handed over: a caller may stop reading at its last event.
                    ended_well = event.reason != "deadline"
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if self._observer is not None:
                seconds = loop.time() - sequence.arrived
                self._observer.request_finished(self._model, ended_well, seconds)
            if not sequence.done:
                sequence.abandoned = True
                if sequence.id not in self._active:  # still queued: out of the count now
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(sequence)
                        self._waiting_changed()
                self._wake.set()

    async def close(self, timeout: float | None = None) -> None:
        """Take no new request; let those queued and generating finish (for at most
        ``timeout``), then end the rest and stop the driver."""
        self._closed = True
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            pass
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        self._fail_all(ModelNotReadyError(self._model, "unloaded"))

    def _start_driver(self) -> None:
        if self._driver is None or self._driver.done():
            self._driver = asyncio.get_running_loop().create_task(
                self._drive(), name=f"loadonce-generate-{self._model}"
            )

    async def _drive(self) -> None:
        try:
            await self._steps()
        except Exception as exc:
            # A fault of the queue itself: no stream may wait forever for a driver gone.
            logger.error("model '%s' generation queue failed", self._model, exc_info=exc)
            self._fail_all(ModelRaisedError(exc, model=self._model))
            raise

    async def _steps(self) -> None:
        while True:
            leaving = self._take_leaving()
            joining = self._take_joining()
            if not joining and not self._active and not leaving:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            requests = {sequence.id: sequence.request for sequence in joining}
            loop = asyncio.get_running_loop()
            began = loop.time()
            for joined in joining:
                joined.joined_at = began
            call = self._executor.submit(
                functools.partial(_advance, self._engine, requests, leaving)
            )
            try:
                outcomes = await self._watched(call)
            except asyncio.CancelledError:
                raise
            except BaseException as caught:  # the engine's code: any exception is its failure
                exc = as_exception(caught)
                logger.error(
                    "model '%s' raised while generating: %s", self._model, exc, exc_info=exc
                )
                self._fail_all(ModelRaisedError(exc, model=self._model), waiting=False)
                await asyncio.wrap_future(self._executor.submit(_reset(self._engine)))
                continue
            now = loop.time()
            self._seconds_per_step = _smoothed(self._seconds_per_step, now - began)
            for sequence_id, outcome in outcomes.items():
                sequence = self._active.get(sequence_id)
                if sequence is not None:
                    self._take(sequence, outcome, now)

    async def _watched(
        self, call: Future[dict[int, Step | Exception]]
    ) -> dict[int, Step | Exception]:
        """The step's outcomes; a step still running ``hang_timeout_s`` after it started is
        said hung until it returns: every stream of the model waits on it (one step at a
        time), and the probes, the metrics and the supervisor must know it, as of a hung
        predict call."""
        running = asyncio.wrap_future(call)
        if self._hang_timeout_s is None:
            return await running
        try:
            return await asyncio.wait_for(asyncio.shield(running), self._hang_timeout_s)
        except TimeoutError:
            pass
        logger.error(
            "model '%s': a generation step has run for more than hang_timeout_s (%g s); the "
            "model is unhealthy until it returns",
            self._model,
            self._hang_timeout_s,
        )
        if self._on_hung_changed is not None:
            self._on_hung_changed(1)
        try:
            return await running
        finally:
            if self._on_hung_changed is not None:
                self._on_hung_changed(0)

    def _take_leaving(self) -> list[int]:
        now = asyncio.get_running_loop().time()
        for sequence in self._active.values():
            if sequence.deadline is not None and now > sequence.deadline:
                sequence.abandoned = True  # its stream says "deadline" when next read
        leaving = [s.id for s in self._active.values() if s.abandoned]
        for sequence_id in leaving:
            self._report(self._leave(sequence_id, now))
        leaving += self._leaving
        self._leaving.clear()
        while self._waiting and self._waiting[0].abandoned:
            self._waiting.popleft()
            self._waiting_changed()
        return leaving

    def _take_joining(self) -> list[_Sequence]:
        room = self._max_sequences - len(self._active)
        if self._static and self._active:
            room = 0
        joining: list[_Sequence] = []
        waited = len(self._waiting)
        while room > 0 and self._waiting:
            sequence = self._waiting.popleft()
            if sequence.abandoned:
                continue
            joining.append(sequence)
            self._active[sequence.id] = sequence
            room -= 1
        if len(self._waiting) != waited:
            self._waiting_changed()
        return joining

    def _take(self, sequence: _Sequence, outcome: Step | Exception, now: float) -> None:
        if isinstance(outcome, Exception):
            self._leave(sequence.id, now)
            sequence.done = True
            error = (
                outcome
                if isinstance(outcome, LoadonceError)
                else ModelRaisedError(outcome, model=self._model)
            )
            sequence.events.put_nowait(error)
            return
        if outcome.prompt_tokens is not None:
            sequence.prompt_tokens = outcome.prompt_tokens
        if outcome.tokens:
            sequence.completion_tokens += outcome.tokens
            sequence.first_token_at = sequence.first_token_at or now
            sequence.last_token_at = now
        sequence.text += outcome.text
        finish = outcome.finish
        end = len(sequence.text)
        stops = sequence.request.stop
        if stops:
            found = _first_stop(sequence.text, stops, sequence.emitted)
            if found is not None:
                end = found
                if finish is None:
                    self._leaving.add(sequence.id)  # the engine holds it still
                finish = "stop"  # even on the last token allowed: the text ends at the stop
            elif finish is None:
                end -= held_back(sequence.text, stops)
        if end > sequence.emitted or not sequence.started:
            sequence.started = True
            sequence.events.put_nowait(Delta(sequence.text[sequence.emitted : end]))
            sequence.emitted = max(end, sequence.emitted)
        # Only what a stop string could still begin in is kept of the emitted text: the whole
        # text, rebuilt at every step, made a long generation quadratic (20,000 pieces of
        # 1 KiB: 34 s, on the loop).
        cut = sequence.emitted - max((len(stop) for stop in stops), default=0)
        if cut > 0:
            sequence.text = sequence.text[cut:]
            sequence.emitted -= cut
        if sequence.abandoned and finish is None:
            return  # let go at the next step
        if finish is not None:
            self._leave(sequence.id, now)
            sequence.events.put_nowait(self._finish(sequence, finish, report=True))

    def _leave(self, sequence_id: int, now: float) -> _Sequence:
        """Out of the batch: its place is free, and how long it held it is measured."""
        sequence = self._active.pop(sequence_id)
        if sequence.joined_at is not None:
            held = now - sequence.joined_at
            self._seconds_per_sequence = _smoothed(self._seconds_per_sequence, held)
        return sequence

    def _finish(self, sequence: _Sequence, reason: FinishReason, *, report: bool) -> Finished:
        sequence.done = True
        if report:
            self._report(sequence)
        return Finished(
            reason=reason,
            prompt_tokens=sequence.prompt_tokens,
            completion_tokens=sequence.completion_tokens,
        )

    def _report(self, sequence: _Sequence) -> None:
        if self._observer is None or sequence.first_token_at is None:
            return
        first, last = sequence.first_token_at, sequence.last_token_at or sequence.first_token_at
        self._observer.generation_finished(
            self._model,
            GenerationReport(
                time_to_first_token_s=first - sequence.arrived,
                time_per_output_token_s=(
                    (last - first) / (sequence.completion_tokens - 1)
                    if sequence.completion_tokens > 1
                    else None
                ),
                prompt_tokens=sequence.prompt_tokens,
                completion_tokens=sequence.completion_tokens,
            ),
        )

    def _fail_all(self, error: LoadonceError, *, waiting: bool = True) -> None:
        failed = list(self._active.values()) + (list(self._waiting) if waiting else [])
        self._active.clear()
        self._leaving.clear()
        if waiting and self._waiting:
            self._waiting.clear()
            self._waiting_changed()
        for sequence in failed:
            if not sequence.done:
                sequence.done = True
                sequence.events.put_nowait(error)
        if not self._active and not self._waiting:
            self._idle.set()


def _advance(
    engine: GenerationEngine,
    joining: dict[int, GenerationRequest],
    leaving: list[int],
    _instance: object,
) -> _Outcomes:
    return engine.advance(joining, leaving)


def _reset(engine: GenerationEngine) -> Callable[[object], None]:
    return lambda _instance: engine.reset()


def _smoothed(previous: float | None, seconds: float) -> float:
    """An exponential average, as the batcher's pace: recent ones count most, one odd one
    does not swing it."""
    return seconds if previous is None else 0.8 * previous + 0.2 * seconds


def _first_stop(text: str, stops: tuple[str, ...], emitted: int) -> int | None:
    """Where the first stop string begins in ``text`` (searching only what could hold one not
    seen before), or None."""
    start = max(0, emitted - max(len(stop) for stop in stops))
    found = [index for stop in stops if (index := text.find(stop, start)) >= 0]
    return min(found) if found else None
