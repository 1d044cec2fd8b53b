"""Batcher: every predict of a model goes through one bounded queue and is dispatched in batches.

One path for every model. Requests wait in a queue bounded in examples (beyond it: 503 at
once). A batch starts whenever a slot of the model is free: it takes the queued requests,
oldest first, up to ``max_batch_size`` examples (a request is never split; one larger than
that goes alone; requests with different request parameters never share a call, and those of
the oldest's parameters further back join it). Without batching, ``max_batch_size`` is 1:
each request is its own call. While the model is busy,
arrivals gather into the next batch, so a lone request never waits for a window unless
``max_wait_ms`` asks for it.

Two things start batches: a dispatcher task, woken by an arrival at an idle model, and the
callback of a returning call, which starts the next batch before answering its own requests.
Both ask one method whether a batch may start now and what it takes (``_next_batch``).
Under load the event loop is late with everything it schedules; the callback keeps the model
from idling for those waits between two batches (on the overloaded forest, 2.5-2.8 times
the answers per second; docs/benchmarks.md).

A request that is cancelled while queued (its deadline passed, its client went away) leaves
the queue at once and never reaches the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from loadonce.core.batch_copy import detached
from loadonce.core.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    InvalidInputError,
    LoadonceError,
    ModelNotReadyError,
    ModelRaisedError,
    QueueFullError,
    describe_exception,
)
from loadonce.core.executors import Executor
from loadonce.core.observer import Answered, CallReport, ModelObserver
from loadonce.core.sparse import dense_if_sparse
from loadonce.core.tracebacks import release_tracebacks
from loadonce.core.tracing import TRACED_REQUEST, CallTracer
from loadonce.runtimes._base import Predictor

logger = logging.getLogger("loadonce")

# The longest fill wait of ``fill_wait_ms = "auto"`` (the default batching's).
AUTO_FILL_WAIT_S = 0.002
# How far a batch looks into the queue for requests it can carry, per example it may hold.
SCAN_PER_SLOT = 4


@dataclass(eq=False)
class _Request:
    examples: list[Any]
    future: asyncio.Future[list[Any]]
    deadline: float | None  # loop time
    parameters: Mapping[str, Any]
    # time.perf_counter(): the loop's clock may tick in whole milliseconds (uvloop's does).
    submitted: float
    queued: bool = True
    # Seconds it waited in the queue, once its call started.
    waited: float = 0.0
    # Its sampled span (opaque: the tracer's), when tracing is on and it is sampled.
    trace: object | None = None
    # What its parameters are compared by (``parameters_key``).
    key: Any = ()
    # Its caller counts its success (``count_answer``), once the answer is built from the
    # outputs: an answer that fails then (outputs JSON cannot carry) is no success.
    caller_counts_success: bool = False


@dataclass(eq=False)
class _Call:
    """One predict call handed to the model's threads; ``hung`` once it outlived
    ``hang_timeout_s``. ``freed``: its slot was then given back (the next batch need not
    wait for it), which it is only while the model has a thread left that is not stuck."""

    started: float
    hung: bool = False
    freed: bool = False
    # The call's span (the tracer's), when it carried a sampled request.
    trace: object | None = None


@dataclass
class CallTiming:
    """Seconds one call spent in each phase, timed in the model's thread (every attempt:
    a failed batched call, then the one-by-one retries)."""

    input_s: float = 0.0
    infer_s: float = 0.0
    output_s: float = 0.0
    # When the call began in the model's thread (time.perf_counter()): the phases follow it.
    began: float = 0.0

    @property
    def total_s(self) -> float:
        return self.input_s + self.infer_s + self.output_s


@dataclass
class _Outcome:
    outputs: list[Any] | None = None
    error: BaseException | None = None
    # False when the request was refused before the model's call (its inputs did not fit):
    # the batch-size histogram counts only what the model was given.
    prepared: bool = True


@dataclass
class Batcher:
    """The queue and dispatcher of one loaded model; created and started inside the loop."""

    model: str
    executor: Executor
    max_batch_size: int
    max_wait_s: float
    max_queue: int
    concurrent_batches: int
    observer: ModelObserver | None = None
    # The version its executor loaded: the one every answer it gives was computed by, also
    # after a reload swapped the model's batcher while it drained.
    version: str = ""
    # After a call returned with fewer than max_batch_size examples waiting: how long the next
    # call may wait for more (``Batching.fill_wait_ms``); None: "auto", from the time a call
    # takes (``_fill_wait``).
    fill_wait_s: float | None = 0.0
    # A call running longer than this is hung: the model is unhealthy until it returns.
    hang_timeout_s: float | None = None
    # Told the number of hung calls whenever it changes (the model's health).
    on_hung_changed: Callable[[int], None] | None = None
    # Told the number of examples queued whenever it changes, instead of the observer (the
    # model sums its queues': a reload's old batcher drains while the new one serves).
    on_queue_changed: Callable[[int], None] | None = None
    # For a model that declares no input shape: the shape of its warm-up's examples, which it
    # is known to answer. A request of another shape that the model fails on is then the
    # request's fault (400, naming both shapes), not the model's (500).
    answered_shape: tuple[int, ...] | None = None
    # Spans of the calls and of the requests' waits (None: tracing is off, nothing is asked).
    tracer: CallTracer | None = None
    _hung: int = 0
    # Calls handed to the threads and not returned yet; one timer watches them all.
    _running: set[_Call] = field(default_factory=set)
    _watchdog: asyncio.TimerHandle | None = None
    _queue: deque[_Request] = field(default_factory=deque)
    _queued_examples: int = 0
    _in_flight: int = 0
    _closed: bool = False
    _wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    # Set when a returning call left requests for the dispatcher to gather (fill_wait_s).
    _filling: bool = False
    # Seconds one call takes, smoothed over recent calls; None until measured. Per call, not
    # per example: a batch costs about the same whatever its size (that is why batching pays),
    # so a per-example pace measured on small batches would overstate the wait many times.
    _seconds_per_call: float | None = None

    def start(self) -> None:
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(
            self._dispatch_forever(), name=f"loadonce-batcher-{self.model}"
        )

    @property
    def queued_examples(self) -> int:
        return self._queued_examples

    @property
    def hung_calls(self) -> int:
        return self._hung

    @property
    def seconds_per_call(self) -> float | None:
        return self._seconds_per_call

    def refuse_if_full(self) -> None:
        """Raise QueueFullError when no room is left at all: lets a route refuse a request
        before it even reads the body."""
        if self._queued_examples >= self.max_queue:
            raise self._full()

    def _full(self, *, expected_wait: float | None = None, left: float = 0.0) -> QueueFullError:
        """``left``: the seconds left of the refused request's deadline (``expected_wait``:
        when it would have been answered): it fits once the queue is that much shorter."""
        pace = self._seconds_per_call
        retry: float | None
        if expected_wait is not None:
            retry = expected_wait - left
        else:  # a full queue has room once one call returns
            retry = None if pace is None else pace / self.concurrent_batches
        return QueueFullError(
            self.model,
            self._queued_examples,
            self.max_queue,
            expected_wait=expected_wait,
            retry_after_s=retry,
        )

    def expected_wait(self, count: int) -> float | None:
        """Seconds until ``count`` more examples would be answered, from the measured pace:
        the calls needed for what is queued and for them, after the ones running now."""
        if self._seconds_per_call is None:
            return None
        calls = -(-(self._queued_examples + count) // self.max_batch_size)  # ceiling
        if self._in_flight >= self.concurrent_batches:
            calls += 1
        return calls * self._seconds_per_call / self.concurrent_batches

    def submit(
        self,
        examples: list[Any],
        deadline: float | None,
        parameters: Mapping[str, Any] | None = None,
        *,
        caller_counts_success: bool = False,
    ) -> asyncio.Future[list[Any]]:
        """Queue a request's examples; the future resolves to one output per example.

        ``parameters`` go to the predictor's ``predict_with``; only requests with equal
        parameters share a call. The request's outcome is counted (the observer's
        ``request_finished``) when the future resolves, except a success when
        ``caller_counts_success``: the caller then counts it with ``count_answer`` once its
        answer is built, as a failure if building it fails."""
        if self._closed:
            raise ModelNotReadyError(self.model, "unloading")
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop:
            # Another loop's future would never be resolved by this one: the call hung for
            # good (asyncio.run(model.predict(...)) in a sync handler), its thread with it.
            raise RuntimeError(wrong_loop(self.model))
        count = len(examples)
        if self._queued_examples + count > self.max_queue and self._queue:
            raise self._full()
        # An idle model always admits: the pace is only ever updated by running calls, so
        # refusing on a stale estimate (one slow first call) could refuse forever.
        idle = not self._queue and self._in_flight < self.concurrent_batches
        if deadline is not None and not idle:
            wait = self.expected_wait(count)
            left = deadline - loop.time()
            if wait is not None and wait > left:
                # It would wait past its deadline and fail with a 504 after using a place in
                # the queue (and maybe the model's time): refuse it now, cheaply. A 503 (retry
                # once the queue is shorter), unless even one call takes longer than its whole
                # deadline: then no retry can help, and it is told so (504).
                pace = self._seconds_per_call
                if pace is not None and pace > left:
                    raise DeadlineTooShortError(self.model, left, pace)
                raise self._full(expected_wait=wait, left=left)
        request = _Request(
            examples=examples,
            future=loop.create_future(),
            deadline=deadline,
            parameters=parameters or {},
            submitted=time.perf_counter(),
            key=parameters_key(parameters) if parameters else (),
            caller_counts_success=caller_counts_success,
        )
        if self.tracer is not None:
            request.trace = TRACED_REQUEST.get()
        request.future.add_done_callback(lambda _: self._forget(request))
        self._queue.append(request)
        self._queued_examples += count
        self._queue_changed()
        self._idle.clear()
        self._wakeup.set()
        return request.future

    def _forget(self, request: _Request) -> None:
        """A request resolved or cancelled: counted, and if still queued, out of the queue."""
        if self.observer is not None:
            future = request.future
            ok = not future.cancelled() and future.exception() is None
            if not (ok and request.caller_counts_success):
                seconds = time.perf_counter() - request.submitted
                self.observer.request_finished(self.model, ok, seconds)
        if request.queued:
            request.queued = False
            self._queued_examples -= len(request.examples)
            with contextlib.suppress(ValueError):
                self._queue.remove(request)
            self._queue_changed()
            self._note_if_idle()

    def count_answer(self, ok: bool, seconds: float) -> None:
        """A request submitted with ``caller_counts_success`` whose outputs came back: its
        answer was built (``ok``) or failed after them; ``seconds`` since it was submitted."""
        if self.observer is not None:
            self.observer.request_finished(self.model, ok, seconds)

    def _queue_changed(self) -> None:
        if self.on_queue_changed is not None:
            self.on_queue_changed(self._queued_examples)
        elif self.observer is not None:
            self.observer.queue_changed(self.model, self._queued_examples)

    def _note_if_idle(self) -> None:
        if not self._queue and self._in_flight == 0:
            self._idle.set()
            self._filling = False  # the next request finds an idle model: no fill wait

    async def _dispatch_forever(self) -> None:
        while True:
            while not self._queue or self._in_flight >= self.concurrent_batches:
                self._wakeup.clear()
                await self._wakeup.wait()
            wait = max(self.max_wait_s, self._fill_wait()) if self._filling else self.max_wait_s
            self._filling = False
            batch = self._next_batch(wait)
            if batch is None:  # worth waiting for a fuller one
                await self._gather_more(wait)
                # Asked again: a returning call may have taken the free slot meanwhile.
                batch = self._next_batch(0.0)
            if batch:
                self._start(batch)
            # Not kept while the loop waits: the requests (and their inputs, up to a body's
            # worth) would live on, unanswered or not, until the next request came.
            del batch

    async def _gather_more(self, wait: float) -> None:
        """Wait up to ``wait`` seconds for a fuller batch."""
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        while self._queue and self._queued_examples < self.max_batch_size:
            remaining = until - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _next_batch(self, wait: float) -> list[_Request] | None:
        """The one dispatch decision, made alike by the dispatcher and by a returning call:
        the batch to start now, or None when none may start: nothing is queued, no slot is
        free, or fewer than ``max_batch_size`` examples wait and a fuller batch is worth
        ``wait`` seconds (the dispatcher waits for it, then asks again with no wait). The batch
        is empty when every request it took had been cancelled or had expired while queued."""
        if not self._queue or self._in_flight >= self.concurrent_batches:
            return None
        if wait > 0 and self._queued_examples < self.max_batch_size:
            return None
        return self._take_batch()

    def _take_batch(self) -> list[_Request]:
        """The oldest request's call: it, then the queued requests with its parameters, oldest
        first, until the next of them would not fit max_batch_size. Requests with other
        parameters keep their places (interleaved, they made every call one request: the
        first mismatch ended the batch). The scan looks SCAN_PER_SLOT times the batch's size
        into the queue at most: a long queue of other parameters costs a call only that
        much."""
        now = asyncio.get_running_loop().time()
        started = time.perf_counter()
        batch: list[_Request] = []
        passed: list[_Request] = []  # looked at, left in the queue, in their order
        size = 0
        budget = SCAN_PER_SLOT * self.max_batch_size
        while self._queue and size < self.max_batch_size and budget > 0:
            budget -= 1
            request = self._queue.popleft()
            if batch and request.key != batch[0].key:
                passed.append(request)
                continue
            if batch and size + len(request.examples) > self.max_batch_size:
                # Among requests of the same parameters, strictly oldest first: a later
                # small one does not overtake it.
                self._queue.appendleft(request)
                break
            request.queued = False
            self._queued_examples -= len(request.examples)
            if request.future.done():
                continue
            if request.deadline is not None and request.deadline <= now:
                # Expired while queued: answered now, and the model never sees it.
                request.future.set_exception(DeadlineExceededError(self.model))
                continue
            request.waited = started - request.submitted
            batch.append(request)
            size += len(request.examples)
        self._queue.extendleft(reversed(passed))
        self._queue_changed()
        if not batch:
            # Every request it took had left: the model may be idle now. Not otherwise: the
            # batch starts at once, and close() must wait for it.
            self._note_if_idle()
            return batch
        if not self._queue:
            self._filling = False  # what a returning call left to fill is taken
        return batch

    def _start(self, batch: list[_Request]) -> None:
        """Hand ``batch`` to the model's threads now. Its answers go out from a loop callback
        when the call returns: no task stands between two batches, since under load each
        task hop is a wait for the busy loop while the model sits idle."""
        self._in_flight += 1
        examples = [request.examples for request in batch]
        parameters = batch[0].parameters
        loop = asyncio.get_running_loop()
        watched = _Call(started=loop.time())
        if self.tracer is not None:
            watched.trace = self._trace_call(batch, examples)
        self._running.add(watched)
        if self._watchdog is None and self.hang_timeout_s is not None:
            self._watchdog = loop.call_later(self.hang_timeout_s, self._watch)

        answered = self.answered_shape

        def call(predictor: Predictor) -> tuple[list[_Outcome], CallTiming]:
            return _timed(predictor, examples, parameters, answered)

        def returned(done: Future[tuple[list[_Outcome], CallTiming]]) -> None:
            # In the model's thread: back to the loop (gone only if the process is ending).
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._finished, batch, done, watched)

        try:
            running = self.executor.submit(call)
        except RuntimeError as exc:  # the threads were shut down: nothing will run it
            failed: Future[tuple[list[_Outcome], CallTiming]] = Future()
            failed.set_exception(exc)
            self._finished(batch, failed, watched)
            return
        running.add_done_callback(returned)

    def _trace_call(self, batch: list[_Request], examples: list[list[Any]]) -> object | None:
        """The call's span, linked to every sampled request it carries; none when it carries
        no sampled request (at a low sampling ratio, most calls). ``examples``: each
        request's."""
        assert self.tracer is not None
        carried = [(r.trace, r.submitted) for r in batch if r.trace is not None]
        if not carried:
            return None
        size = sum(map(len, examples))
        started = time.perf_counter()
        return self.tracer.call_started(self.model, carried, size, len(batch), started)

    def _watch(self) -> None:
        """On the loop, at most every ``hang_timeout_s`` while calls run (one timer per model,
        not one per call): mark the calls that outlived it as hung, then watch again."""
        self._watchdog = None
        assert self.hang_timeout_s is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for watched in [c for c in self._running if not c.hung]:
            if now - watched.started >= self.hang_timeout_s:
                self._hung_call(watched)
        waiting = [c.started for c in self._running if not c.hung]
        if waiting:
            self._watchdog = loop.call_at(min(waiting) + self.hang_timeout_s, self._watch)

    def _hung_call(self, watched: _Call) -> None:
        """A call that has not returned ``hang_timeout_s`` after it started: the model is
        unhealthy, and the call's slot goes to the next batch (as far as the model's threads
        allow), so one stuck call does not stop every later request."""
        watched.hung = True
        self._hung += 1
        if self._hung < self.executor.threads:
            # A thread is left that is not stuck. Else (a serialized model's one thread) the
            # next batch would only queue behind the hung call in that thread, past
            # max_queue and each found hung in turn: it waits in this queue instead.
            watched.freed = True
            self._in_flight -= 1
        logger.error(
            "model '%s': a predict call has run for more than hang_timeout_s (%g s); the "
            "model is unhealthy until it returns",
            self.model,
            self.hang_timeout_s,
        )
        if self.on_hung_changed is not None:
            self.on_hung_changed(self._hung)
        self._dispatch_ready()
        self._note_if_idle()
        self._wakeup.set()

    def _finished(
        self,
        batch: list[_Request],
        done: Future[tuple[list[_Outcome], CallTiming]],
        watched: _Call,
    ) -> None:
        """On the loop, when a batch's call returned: start the next batch first (the model
        works while this one's answers go out), then answer each request of this one, then
        (``_account``) measure and trace the call."""
        self._running.discard(watched)
        if watched.hung:
            self._hung -= 1
            logger.warning("model '%s': a hung predict call returned", self.model)
            if self.on_hung_changed is not None:
                self.on_hung_changed(self._hung)
        if not watched.freed:  # a freed slot was given back when the call was found hung
            self._in_flight -= 1
        failure: Exception | None = None
        outcomes: list[_Outcome] = []
        timing: CallTiming | None = None
        try:
            outcomes, timing = done.result()
        except Exception as exc:  # the call never ran (run_batch itself answers per request)
            failure = exc
        else:
            self._observe(timing.total_s)
        try:
            self._dispatch_ready()
        finally:
            now = asyncio.get_running_loop().time()
            # The requests given the call's answer (not a 504, 499 or error).
            answered = Answered()
            for index, request in enumerate(batch):
                if request.future.done():  # the caller gave up (deadline, disconnect)
                    if outcomes and (error := outcomes[index].error) is not None:
                        release_tracebacks(error)  # no one will answer it (core/tracebacks.py)
                    continue
                if request.deadline is not None and now > request.deadline:
                    # Answered too late: its 504 is its outcome, counted as such.
                    if outcomes and (error := outcomes[index].error) is not None:
                        release_tracebacks(error)
                    request.future.set_exception(DeadlineExceededError(self.model))
                elif failure is not None:
                    request.future.set_exception(failure)
                elif (error := outcomes[index].error) is not None:
                    request.future.set_exception(error)
                else:
                    request.future.set_result(outcomes[index].outputs or [])
                    answered.requests += 1
                    answered.examples += len(request.examples)
                    answered.queued_s += request.waited
            # After the answers: the requests' tasks were woken first, so each answer leaves
            # before the call's metrics and trace are written (at one connection, the
            # metrics of a call were 40-60 µs of a request's 400-600 on the loop). Before the
            # model is noted idle: what waits for that (close(), then tracing's shutdown)
            # runs after the call is accounted for.
            asyncio.get_running_loop().call_soon(
                self._account,
                batch,
                outcomes,
                timing,
                watched.trace,
                failure,
                answered,
            )
            self._note_if_idle()
            self._wakeup.set()

    def _account(
        self,
        batch: list[_Request],
        outcomes: list[_Outcome],
        timing: CallTiming | None,
        trace: object | None,
        failure: Exception | None,
        answered: Answered,
    ) -> None:
        """A returned call's metrics and its span; ``answered``: its requests that were
        given its answer (each of those is charged the call's phases)."""
        if timing is not None and self.observer is not None:
            self._report(batch, outcomes, timing, answered)
        if trace is not None and self.tracer is not None:
            errors = [failure] if failure is not None else [o.error for o in outcomes if o.error]
            self.tracer.call_ended(trace, timing, errors)

    def _fill_wait(self) -> float:
        """How long the next call may wait for a fuller batch after one returned: as set, or
        ("auto") half a call's recent time, at most AUTO_FILL_WAIT_S. Waiting pays where a
        call costs about the same for a few examples or many (a forest's 5 ms: 2 ms of it took
        its batches from ~32 to ~64 examples); a model that answers in 0.1 ms waits 0.05."""
        if self.fill_wait_s is not None:
            return self.fill_wait_s
        if self._seconds_per_call is None:
            return 0.0
        return min(AUTO_FILL_WAIT_S, 0.5 * self._seconds_per_call)

    def _dispatch_ready(self) -> None:
        """After a call returned: start queued batches while a slot is free, unless a fuller
        batch is worth waiting for (``max_wait_ms``, ``fill_wait_ms``): the dispatcher waits
        for it then."""
        wait = max(self.max_wait_s, self._fill_wait())
        while (batch := self._next_batch(wait)) is not None:
            if batch:
                self._start(batch)
        if self._queue and self._in_flight < self.concurrent_batches:
            self._filling = True  # the dispatcher gathers them (the caller wakes it)

    def _report(
        self,
        batch: list[_Request],
        outcomes: list[_Outcome],
        timing: CallTiming,
        answered: Answered,
    ) -> None:
        given = sum(len(r.examples) for r, o in zip(batch, outcomes, strict=True) if o.prepared)
        if not given or self.observer is None:
            return  # the model was given nothing: no call to count
        report = CallReport(
            examples=given,
            # Not those whose caller had gone (a 499) or whose deadline passed (a 504): the
            # statistics extension charges compute to answered requests only, as Triton.
            answered=answered.requests,
            answered_examples=answered.examples,
            answered_queued_s=answered.queued_s,
            queued_s=tuple(request.waited for request in batch),
            input_s=timing.input_s,
            infer_s=timing.infer_s,
            output_s=timing.output_s,
            finished_at=time.time(),
        )
        self.observer.call_returned(self.model, report)

    def _observe(self, seconds: float) -> None:
        previous = self._seconds_per_call
        # An exponential average: recent calls count most, one odd call does not swing it.
        self._seconds_per_call = seconds if previous is None else 0.8 * previous + 0.2 * seconds

    async def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, let queued and running ones finish (for at most ``timeout``
        seconds: what is still queued then is answered 503), then stop dispatching."""
        self._closed = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            logger.warning(
                "model '%s': requests still queued or running after %g s; answering 503 to "
                "the queued ones and leaving running calls behind",
                self.model,
                timeout,
            )
            while self._queue:
                request = self._queue.popleft()
                request.queued = False
                if not request.future.done():
                    request.future.set_exception(ModelNotReadyError(self.model, "unloading"))
            self._queued_examples = 0
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def wrong_loop(model: str) -> str:
    """Why a call from another event loop than the model's is refused."""
    return (
        f"model '{model}' serves on its app's event loop: await model.predict(...) there; "
        "from a thread of the app (a sync def route), call anyio.from_thread.run("
        "model.predict, ...), not asyncio.run"
    )


def _timed(
    predictor: Predictor,
    requests: Sequence[list[Any]],
    parameters: Mapping[str, Any],
    answered_shape: tuple[int, ...] | None,
) -> tuple[list[_Outcome], CallTiming]:
    """``run_batch``, timed in the worker thread: seen from a busy event loop, a call would
    look as slow as the loop is late to notice it ended, and admission would refuse work the
    model has time for."""
    timing = CallTiming(began=time.perf_counter())
    outcomes = run_batch(predictor, requests, parameters, answered_shape, timing)
    return outcomes, timing


def run_batch(
    predictor: Predictor,
    requests: Sequence[list[Any]],
    parameters: Mapping[str, Any] | None = None,
    answered_shape: tuple[int, ...] | None = None,
    timing: CallTiming | None = None,
) -> list[_Outcome]:
    """In a worker thread: check each request alone, predict all the valid ones in one call,
    and if that call fails, predict them one by one so only the culprit fails. ``timing``
    is told the seconds each phase took."""
    parameters = parameters or {}
    timing = timing or CallTiming()
    lap = _Laps()
    outcomes = [_Outcome() for _ in requests]
    prepared: list[tuple[int, Any]] = []
    for index, examples in enumerate(requests):
        try:
            prepared.append((index, _prepare(predictor, examples)))
        except BaseException as exc:  # the model's code: see _from_the_model
            outcomes[index].error = _from_the_model(exc)
            outcomes[index].prepared = False
    if len(prepared) > 1:
        try:
            # Detached: a model that writes into its inputs and fails must not change what
            # the one-by-one retries below are given.
            combined = detached(predictor.combine([batch for _, batch in prepared]))
            count = sum(len(requests[i]) for i, _ in prepared)
            timing.input_s += lap()
            predicted = _predict(predictor, combined, parameters)
            timing.infer_s += lap()
            outputs = _one_output_per_example(predicted, count)
        except BaseException as exc:  # the model's code: see _from_the_model
            timing.infer_s += lap()  # the failed attempt was the model's time
            logger.info(
                "batch of %d requests failed (%s); predicting them one by one",
                len(prepared),
                describe_exception(exc),
            )
        else:
            start = 0
            for index, _ in prepared:
                end = start + len(requests[index])
                outcomes[index].outputs = outputs[start:end]
                start = end
            timing.output_s += lap()
            return outcomes
    timing.input_s += lap()
    for index, batch in prepared:
        try:
            result = _predict(predictor, batch, parameters)
            timing.infer_s += lap()
            outcomes[index].outputs = _one_output_per_example(result, len(requests[index]))
            timing.output_s += lap()
        except BaseException as exc:  # the model's code: see _from_the_model
            timing.infer_s += lap()
            outcomes[index].error = _misfit(requests[index], answered_shape) or _from_the_model(exc)
    return outcomes


class _Laps:
    """Seconds since the last lap (or since it was made), each time it is called."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed


def common_shape(examples: Sequence[Any]) -> tuple[int, ...] | None:
    """The shape every example has, or None (different shapes, or not arrays)."""
    try:
        shapes = {np.shape(example) for example in examples}
    except ValueError:  # a ragged example
        return None
    return shapes.pop() if len(shapes) == 1 else None


def _misfit(examples: Sequence[Any], answered: tuple[int, ...] | None) -> Exception | None:
    """A request the model failed on whose examples have another shape than the one it is
    known to answer: a 400 that names both."""
    if answered is None:
        return None
    shape = common_shape(examples)
    if shape is None or shape == answered:
        return None
    return InvalidInputError(
        f"the model failed on examples of shape {list(shape)}; it answers examples of shape "
        f"{list(answered)} (its warm-up example's): declare input_shape to have requests "
        "checked before they reach it"
    )


def _from_the_model(exc: BaseException) -> Exception:
    """An exception of the predictor's code, marked as the model's (loadonce's own errors,
    such as InvalidInputError for a bad input, say what they are already). Any exception at
    all: SystemExit, KeyboardInterrupt or GeneratorExit raised by a model's code in its
    thread are its failure, not a signal to the server (re-raised on the event loop, one
    took the whole server out of service; another left its request unanswered)."""
    if isinstance(exc, LoadonceError):
        return exc
    wrapped = ModelRaisedError(exc)
    wrapped.__cause__ = exc
    return wrapped


def _is_data_frame(value: Any) -> bool:
    """A pandas DataFrame, without importing pandas (a model that returns one has)."""
    kind = type(value)
    return kind.__name__ == "DataFrame" and kind.__module__.startswith("pandas")


def parameters_key(value: Any) -> Any:
    """``value`` (request parameters) as something equal only to the same values of the same
    types: Python holds 1, 1.0 and True equal (and 0, 0.0, -0.0, False), so requests with
    those parameters shared a call, and all got the first one's."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), parameters_key(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(parameters_key(item) for item in value))
    if isinstance(value, float):
        return ("float", repr(value))  # -0.0 and 0.0 differ; NaN equals NaN
    return (type(value).__name__, value)


def _predict(predictor: Predictor, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
    # The common case skips a call: predict_with exists for the few requests with parameters.
    return predictor.predict_with(batch, parameters) if parameters else predictor.predict(batch)


def _prepare(predictor: Predictor, examples: list[Any]) -> Any:
    try:
        return predictor.prepare(examples)
    except InvalidInputError:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(describe_exception(exc)) from exc


def _one_output_per_example(outputs: Sequence[Any], count: int) -> list[Any]:
    """The model's outputs as a list, one per example. Text, bytes and mappings iterate, but
    not by example (characters, keys: a columnar ``{"label": [...], "score": [...]}`` for two
    examples answered "label" and "score"); a DataFrame iterates its column names, so its
    rows are taken as records."""
    if isinstance(outputs, str | bytes | bytearray | Mapping):
        raise RuntimeError(
            f"the model returned {type(outputs).__name__}, not one output per example (a "
            "list or an array)"
        )
    if _is_data_frame(outputs):
        outputs = outputs.to_dict("records")  # type: ignore[attr-defined]
    outputs = dense_if_sparse(outputs)
    try:
        # An iterator (a generator) is read one past the count at most: an endless one held
        # its thread, and took memory, for good.
        listed = list(islice(outputs, count + 1) if isinstance(outputs, Iterator) else outputs)
    except TypeError:
        raise RuntimeError(
            f"the model returned {type(outputs).__name__}, not one output per example"
        ) from None
    if len(listed) != count:
        cut = isinstance(outputs, Iterator) and len(listed) > count  # read no further
        many = f"more than {count}" if cut else len(listed)
        raise RuntimeError(f"the model returned {many} outputs for {count} examples")
    return listed
