"""The batcher's dispatch decisions, in a running loop, with a fake executor: the test decides
when each predict call returns, so what a batch holds and when it starts is asserted without
threads or sleeps (each test takes milliseconds). tests/test_batching.py keeps the end-to-end
checks through the HTTP routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from loadonce.core.batcher import Batcher
from loadonce.core.errors import (
    DeadlineExceededError,
    DeadlineTooShortError,
    InvalidInputError,
    ModelNotReadyError,
    ModelRaisedError,
    QueueFullError,
)
from loadonce.core.executors import Executor
from loadonce.core.observer import CallReport
from loadonce.runtimes._base import Predictor

pytestmark = pytest.mark.anyio

T = TypeVar("T")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakePredictor(Predictor):
    """Doubles each number; records every call's batch and parameters. Raises on a batch
    holding -1, on any batch while ``broken``; refuses an example that is a list (400)."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.parameters: list[dict[str, Any]] = []
        self.broken = False
        self.seconds = 0.0  # how long each call takes

    def prepare(self, examples: list[Any]) -> Any:
        if any(isinstance(example, list) for example in examples):
            raise InvalidInputError("expected numbers")
        return examples

    def predict(self, batch: Any) -> Sequence[Any]:
        return self.predict_with(batch, {})

    def predict_with(self, batch: Any, parameters: Mapping[str, Any]) -> Sequence[Any]:
        self.calls.append(list(batch))
        self.parameters.append(dict(parameters))
        if self.seconds:
            time.sleep(self.seconds)
        if self.broken or -1 in batch:
            raise ValueError("the model cannot take this")
        return [2 * x for x in batch]


@dataclass(eq=False)
class _Pending:
    call: Callable[[Predictor], Any]
    future: Future[Any]


class FakeExecutor(Executor):
    """Records each call handed to it; it runs only when the test says so, in the test's
    thread, and its future resolves then (as a model thread's would)."""

    def __init__(self, predictor: FakePredictor, threads: int = 2) -> None:
        super().__init__([predictor], threads=threads, name="fake")
        self.pending: list[_Pending] = []  # in the order they were handed over
        self.shut = False

    def submit(self, call: Callable[[Predictor], T]) -> Future[T]:
        if self.shut:
            raise RuntimeError("cannot schedule new calls after shutdown")
        future: Future[T] = Future()
        self.pending.append(_Pending(call, future))
        return future

    def run(self, index: int = 0) -> None:
        """The call returns: run it on the predictor now."""
        pending = self.pending.pop(index)
        pending.future.set_result(pending.call(self.instances[0]))

    def fail(self, exc: BaseException, index: int = 0) -> None:
        """The call never ran (the threads failed it)."""
        self.pending.pop(index).future.set_exception(exc)


async def settle() -> None:
    """Let the loop run everything that is ready (the dispatcher, the returning-call
    callbacks), without letting any time pass for it."""
    for _ in range(20):
        await asyncio.sleep(0)


async def eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    """For the few tests that need the loop's timers (fill and batching windows, hung calls)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + within
    while not condition():
        assert loop.time() < until, "never happened"
        await asyncio.sleep(0.001)


@dataclass
class Harness:
    batcher: Batcher
    executor: FakeExecutor
    model: FakePredictor
    sent: list[asyncio.Future[list[Any]]] = field(default_factory=list)

    def send(
        self,
        *examples: Any,
        deadline: float | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> asyncio.Future[list[Any]]:
        future = self.batcher.submit(list(examples), deadline, parameters)
        self.sent.append(future)
        return future

    async def run(self, index: int = 0) -> None:
        self.executor.run(index)
        await settle()

    @property
    def running(self) -> int:
        return len(self.executor.pending)


@asynccontextmanager
async def batcher(threads: int = 2, **fields: Any) -> AsyncIterator[Harness]:
    model = FakePredictor()
    executor = FakeExecutor(model, threads)
    settings: dict[str, Any] = {
        "model": "m",
        "max_batch_size": 8,
        "max_wait_s": 0.0,
        "max_queue": 100,
        "concurrent_batches": 1,
    }
    created = Batcher(executor=executor, **(settings | fields))
    created.start()
    harness = Harness(created, executor, model)
    try:
        yield harness
    finally:
        await created.close(0)
        for future in harness.sent:
            if future.done() and not future.cancelled():
                future.exception()  # answered 503 by the close: nothing left unretrieved


def answer(future: asyncio.Future[list[Any]]) -> list[Any]:
    assert future.done(), "not answered yet"
    return future.result()


# Batch composition


async def test_an_idle_model_takes_a_lone_request_at_once() -> None:
    async with batcher(max_batch_size=64) as h:
        lone = h.send(1)
        await settle()
        assert h.running == 1, "dispatched without waiting for a window"
        await h.run()
        assert answer(lone) == [2]


async def test_arrivals_while_busy_gather_into_the_next_batch_oldest_first() -> None:
    async with batcher(max_batch_size=8) as h:
        first = h.send(1)
        await settle()
        later = [h.send(2), h.send(3, 4), h.send(5)]
        await settle()
        assert h.running == 1, "one slot: the arrivals wait for it"
        assert h.batcher.queued_examples == 4
        await h.run()
        assert answer(first) == [2]
        assert h.running == 1
        await h.run()
        assert h.model.calls == [[1], [2, 3, 4, 5]]
        assert [answer(f) for f in later] == [[4], [6, 8], [10]]
        assert h.batcher.queued_examples == 0


async def test_a_batch_holds_at_most_max_batch_size_examples_and_never_splits_a_request() -> None:
    async with batcher(max_batch_size=4) as h:
        h.send(0)
        await settle()
        a, b, c = h.send(1, 2), h.send(3, 4, 5), h.send(6)
        await h.run()
        await h.run()
        await h.run()
        # [1, 2] + [3, 4, 5] would be 5 examples: [3, 4, 5] waits for the next call, whole.
        assert h.model.calls == [[0], [1, 2], [3, 4, 5, 6]]
        assert (answer(a), answer(b), answer(c)) == ([2, 4], [6, 8, 10], [12])


async def test_a_request_larger_than_a_batch_goes_alone_and_whole() -> None:
    async with batcher(max_batch_size=4) as h:
        h.send(0)
        await settle()
        small, large, after = h.send(1), h.send(*range(10, 20)), h.send(2)
        for _ in range(4):
            await h.run()
        assert h.model.calls == [[0], [1], list(range(10, 20)), [2]]
        assert answer(large) == [2 * x for x in range(10, 20)]
        assert (answer(small), answer(after)) == ([2], [4])


async def test_requests_with_different_parameters_never_share_a_call() -> None:
    async with batcher(max_batch_size=8) as h:
        h.send(0)
        await settle()
        plain = h.send(1)
        hot = [h.send(2, parameters={"temperature": 1}), h.send(3, parameters={"temperature": 1})]
        cold = h.send(4, parameters={"temperature": 0})
        last = h.send(5)
        while h.running:
            await h.run()
        # The oldest request's parameters make the call, with every queued request of the
        # same ones; the others keep their places, oldest first.
        assert h.model.calls == [[0], [1, 5], [2, 3], [4]]
        assert h.model.parameters == [{}, {}, {"temperature": 1}, {"temperature": 0}]
        assert [answer(f) for f in [plain, *hot, cold, last]] == [[2], [4], [6], [8], [10]]


async def test_interleaved_parameters_still_batch_by_parameters() -> None:
    """Alternating parameters made every call one request (the first mismatch ended it)."""
    async with batcher(max_batch_size=8) as h:
        h.send(0)
        await settle()
        sent = [h.send(i, parameters={"scale": i % 2}) for i in range(1, 9)]
        while h.running:
            await h.run()
        assert h.model.calls == [[0], [1, 3, 5, 7], [2, 4, 6, 8]]
        assert [answer(f) for f in sent] == [[2 * i] for i in range(1, 9)]


# Waiting for a fuller batch


async def test_with_max_wait_a_lone_request_waits_for_the_batch_to_fill() -> None:
    async with batcher(max_batch_size=4, max_wait_s=60) as h:
        h.send(1)
        await settle()
        assert h.running == 0, "waiting for more examples"
        h.send(2, 3)
        await settle()
        assert h.running == 0
        h.send(4)  # the batch is full: it starts now, not at the end of the window
        await settle()
        await h.run()
        assert h.model.calls == [[1, 2, 3, 4]]


async def test_max_wait_ends_with_a_partial_batch() -> None:
    async with batcher(max_batch_size=4, max_wait_s=0.02) as h:
        lone = h.send(1)
        await settle()
        assert h.running == 0
        await eventually(lambda: h.running == 1)
        await h.run()
        assert answer(lone) == [2]


async def test_under_load_the_next_batch_waits_to_fill_but_an_idle_model_never_does() -> None:
    async with batcher(max_batch_size=4, fill_wait_s=60) as h:
        first = h.send(1)
        await settle()
        assert h.running == 1, "an idle model takes the first request at once"
        h.send(2)
        await h.run()
        assert answer(first) == [2]
        assert h.running == 0, "the next batch waits to fill"
        h.send(3)
        await settle()
        assert h.running == 0
        h.send(4, 5)  # full now
        await settle()
        await h.run()
        assert h.model.calls == [[1], [2, 3, 4, 5]]
        # Idle again: the next request is not held back.
        h.send(6)
        await settle()
        assert h.running == 1


async def test_the_fill_wait_ends_with_a_partial_batch() -> None:
    async with batcher(max_batch_size=4, fill_wait_s=0.02) as h:
        h.send(1)
        await settle()
        waiting = h.send(2)
        await h.run()
        assert h.running == 0
        await eventually(lambda: h.running == 1)
        await h.run()
        assert h.model.calls == [[1], [2]]
        assert answer(waiting) == [4]


async def test_the_auto_fill_wait_follows_what_a_call_costs() -> None:
    # fill_wait_ms = "auto" (the default batching's): after a call of 40 ms the next batch
    # waits to fill (2 ms at most), and then starts with what it has.
    async with batcher(max_batch_size=4, fill_wait_s=None) as h:
        h.model.seconds = 0.04
        h.send(1)
        await settle()
        h.send(2)
        await h.run()
        assert h.running == 0, "after a slow call the next batch waits to fill"
        loop = asyncio.get_running_loop()
        returned = loop.time()
        await eventually(lambda: h.running == 1)
        assert loop.time() - returned < 1.0
        await h.run()
        assert h.model.calls == [[1], [2]]


async def test_without_fill_wait_the_next_call_takes_what_waits_at_once() -> None:
    async with batcher(max_batch_size=8) as h:
        h.send(1)
        await settle()
        h.send(2)
        await h.run()
        assert h.running == 1
        h.send(3)  # arrives while [2] runs: waits for the next call
        await h.run()
        await h.run()
        assert h.model.calls == [[1], [2], [3]]


# Leaving the queue early


async def test_a_request_cancelled_while_queued_leaves_and_never_reaches_the_model() -> None:
    async with batcher(max_batch_size=8) as h:
        h.send(0)
        await settle()
        gone, kept = h.send(1, 1), h.send(2)
        assert h.batcher.queued_examples == 3
        gone.cancel()
        await settle()
        assert h.batcher.queued_examples == 1, "left the queue at once, not at dispatch"
        await h.run()
        await h.run()
        assert h.model.calls == [[0], [2]]
        assert answer(kept) == [4]


async def test_a_request_whose_deadline_passed_while_queued_never_reaches_the_model() -> None:
    async with batcher(max_batch_size=8) as h:
        h.send(0)
        await settle()
        loop = asyncio.get_running_loop()
        late = h.send(1, deadline=loop.time() + 0.005)
        in_time = h.send(2, deadline=loop.time() + 60)
        await asyncio.sleep(0.01)
        await h.run()
        await h.run()
        assert h.model.calls == [[0], [2]]
        with pytest.raises(DeadlineExceededError):
            answer(late)
        assert answer(in_time) == [4]


async def test_a_caller_giving_up_during_its_call_leaves_the_others_their_answers() -> None:
    async with batcher(max_batch_size=8) as h:
        h.send(0)
        await settle()
        gone, kept = h.send(1), h.send(2)
        await h.run()
        gone.cancel()  # its caller gave up while the call ran
        await h.run()
        assert answer(kept) == [4]
        assert gone.cancelled()


# Admission


async def test_a_full_queue_refuses_at_once_with_the_numbers() -> None:
    async with batcher(max_batch_size=1, max_queue=3) as h:
        h.send(0)
        await settle()
        h.send(1, 2)
        h.send(3)
        with pytest.raises(QueueFullError, match=r"3 examples are queued \(max_queue 3\)"):
            h.send(4)
        assert h.batcher.queued_examples == 3


async def test_refuse_if_full_refuses_before_the_body_is_read() -> None:
    async with batcher(max_batch_size=1, max_queue=2) as h:
        h.send(0)
        await settle()
        h.batcher.refuse_if_full()
        h.send(1, 2)
        with pytest.raises(QueueFullError):
            h.batcher.refuse_if_full()


async def test_an_empty_queue_admits_a_request_larger_than_it() -> None:
    async with batcher(max_batch_size=8, max_queue=2) as h:
        request = h.send(1, 2, 3)
        await settle()
        await h.run()
        assert answer(request) == [2, 4, 6]


async def test_a_request_that_would_miss_its_deadline_is_refused_at_admission() -> None:
    async with batcher(max_batch_size=1) as h:
        h.model.seconds = 0.02  # measured in the call: 0.02 s a call at least
        paced = h.send("pace")
        await settle()
        await h.run()
        h.model.seconds = 0.0
        assert answer(paced) == ["pacepace"]
        assert h.batcher.seconds_per_call is not None
        assert h.batcher.seconds_per_call >= 0.02
        h.send(0)  # the model is busy now: an idle one would admit anything
        await settle()
        loop = asyncio.get_running_loop()
        pace = h.batcher.seconds_per_call
        # Time for one call, not for the one running and its own: overloaded, and worth a
        # retry once the model is free.
        with pytest.raises(QueueFullError, match="past this request's deadline") as full:
            h.send(1, 2, deadline=loop.time() + pace * 1.5)
        assert full.value.retry_after_s == 1
        # Less time than one call takes: no retry can be answered in time (a 504, not 503).
        with pytest.raises(DeadlineTooShortError, match="longer deadline") as short:
            h.send(1, 2, deadline=loop.time() + pace / 4)
        assert short.value.status == 504
        assert short.value.retry_after_s is None
        assert h.batcher.queued_examples == 0
        # With time enough, the same request is admitted.
        admitted = h.send(1, 2, deadline=loop.time() + 60)
        while h.running:
            await h.run()
        assert answer(admitted) == [2, 4]
        assert h.model.calls == [["pace"], [0], [1, 2]], "the refused request never ran"


async def test_an_idle_model_admits_even_after_one_slow_call() -> None:
    async with batcher(max_batch_size=1) as h:
        h.model.seconds = 0.1
        slow = h.send(0)
        await settle()
        await h.run()
        assert answer(slow) == [0]
        h.model.seconds = 0.0
        assert h.batcher.seconds_per_call is not None
        assert h.batcher.seconds_per_call >= 0.1
        loop = asyncio.get_running_loop()
        # Idle: a deadline shorter than the pace is admitted, so the pace can recover.
        for value in range(3):
            request = h.send(value, deadline=loop.time() + 0.08)
            await settle()
            await h.run()
            assert answer(request) == [2 * value]


# Concurrent calls


async def test_concurrent_batches_runs_that_many_calls_at_once() -> None:
    async with batcher(max_batch_size=1, concurrent_batches=3) as h:
        requests = [h.send(i) for i in range(5)]
        await settle()
        assert h.running == 3
        await h.run(1)  # any of them returning frees a slot for the next
        assert h.running == 3
        while h.running:
            await h.run()
        assert [answer(r) for r in requests] == [[2 * i] for i in range(5)]
        assert sorted(map(tuple, h.model.calls)) == [(i,) for i in range(5)]


async def test_never_more_calls_than_concurrent_batches_when_both_dispatchers_start_one() -> None:
    # The dispatcher is waiting to fill a batch when a call returns, and the arrivals that
    # fill it let the returning call start batches in every slot: the dispatcher, woken
    # after it, must not start one more.
    async with batcher(max_batch_size=2, max_wait_s=60, concurrent_batches=2) as h:
        h.send(0, 0)
        await settle()
        h.send(1)  # the dispatcher waits for a fuller batch, in the slot left
        await settle()
        assert h.running == 1
        h.executor.run()
        h.send(2)
        h.send(3, 3)
        h.send(4, 4)
        await settle()
        assert h.running == 2
        await h.run()
        assert h.running == 2
        while h.running:
            await h.run()
        assert h.model.calls == [[0, 0], [1, 2], [3, 3], [4, 4]]


# Failures


async def test_a_model_exception_fails_that_batchs_requests_only_and_the_next_batch_runs() -> None:
    async with batcher(max_batch_size=8) as h:
        h.model.broken = True
        failing = [h.send(1)]
        await settle()
        failing += [h.send(2), h.send(3)]
        await h.run()
        later = h.send(4)
        await h.run()  # [2, 3] fails as one call, then each alone
        h.model.broken = False
        await h.run()
        assert h.model.calls == [[1], [2, 3], [2], [3], [4]]
        for request in failing:
            with pytest.raises(ModelRaisedError) as raised:
                answer(request)
            assert isinstance(raised.value.model_error, ValueError)
        assert answer(later) == [8]


async def test_a_bad_request_in_a_batch_fails_alone() -> None:
    async with batcher(max_batch_size=16) as h:
        h.send(100)
        await settle()
        # The model raises on -1; prepare refuses [1, 2] before the batch.
        requests = [h.send(value) for value in (0, 1, -1, 3, [1, 2], 5)]
        await h.run()
        await h.run()
        with pytest.raises(ModelRaisedError):
            answer(requests[2])
        with pytest.raises(InvalidInputError, match="expected numbers"):
            answer(requests[4])
        for i in (0, 1, 3, 5):
            assert answer(requests[i]) == [2 * i]
        assert any(-1 in call and len(call) > 1 for call in h.model.calls), "shared a batch"


class BatchSizes:
    """An observer that keeps the examples of each model call it is told of."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def call_returned(self, model: str, report: CallReport) -> None:
        self.sizes.append(report.examples)

    def request_finished(self, model: str, ok: bool, seconds: float) -> None:
        pass

    def queue_changed(self, model: str, queued_examples: int) -> None:
        pass


async def test_the_batch_size_counts_only_what_the_model_was_given() -> None:
    observer = BatchSizes()
    async with batcher(max_batch_size=16, observer=observer) as h:
        h.send(100)
        await settle()
        h.send(1)
        h.send([1, 2])  # refused by prepare: a 400, never the model's
        h.send(3, 4)
        await h.run()
        await h.run()
        refused = h.send([5])  # a call of only refused requests is no call of the model
        await settle()
        await h.run()
        with pytest.raises(InvalidInputError):
            answer(refused)
        assert observer.sizes == [1, 3]


async def test_a_call_that_never_ran_fails_its_batch_and_the_next_batch_runs() -> None:
    async with batcher(max_batch_size=8) as h:
        first = h.send(1)
        await settle()
        later = h.send(2)
        h.executor.fail(RuntimeError("the thread died"))
        await settle()
        with pytest.raises(RuntimeError, match="the thread died"):
            answer(first)
        await h.run()
        assert answer(later) == [4]


async def test_threads_shut_down_fail_the_batch_at_once() -> None:
    async with batcher(max_batch_size=8) as h:
        h.executor.shut = True
        request = h.send(1)
        await settle()
        with pytest.raises(RuntimeError, match="shutdown"):
            answer(request)
        assert h.model.calls == []


# Hung calls


async def test_a_hung_call_gives_its_slot_back_and_is_reported_until_it_returns() -> None:
    reported: list[int] = []
    async with batcher(max_batch_size=8, hang_timeout_s=0.01, on_hung_changed=reported.append) as h:
        stuck = h.send(1)
        await settle()
        later = h.send(2)
        await settle()
        assert h.running == 1
        await eventually(lambda: h.batcher.hung_calls == 1)
        assert reported == [1]
        await settle()
        assert h.running == 2, "the next batch did not wait for the hung call"
        await h.run(1)
        assert answer(later) == [4]
        await h.run(0)  # the hung call returns at last: its caller still gets the answer
        assert answer(stuck) == [2]
        assert h.batcher.hung_calls == 0
        assert reported == [1, 0]


async def test_a_hung_call_of_a_model_with_one_thread_keeps_its_slot() -> None:
    """With one thread (serialized), the next batch could only queue behind the hung call in
    that thread, past max_queue, and be found hung in turn: it waits in the batcher's queue,
    and one call is hung."""
    async with batcher(threads=1, max_batch_size=8, hang_timeout_s=0.01) as h:
        stuck = h.send(1)
        await settle()
        later = h.send(2)
        await eventually(lambda: h.batcher.hung_calls == 1)
        await asyncio.sleep(0.05)
        await settle()
        assert h.running == 1, "a batch was handed to the stuck thread"
        assert h.batcher.hung_calls == 1
        await h.run(0)
        assert answer(stuck) == [2]
        await h.run(0)
        assert answer(later) == [4]
        assert h.batcher.hung_calls == 0


# Closing


async def test_close_lets_queued_and_running_requests_finish() -> None:
    async with batcher(max_batch_size=1) as h:
        running, queued = h.send(1), h.send(2)
        await settle()
        closing = asyncio.ensure_future(h.batcher.close())
        await settle()
        with pytest.raises(ModelNotReadyError):
            h.send(3)
        await h.run()
        assert not closing.done()
        await h.run()
        await closing
        assert (answer(running), answer(queued)) == ([2], [4])


async def test_close_past_its_timeout_answers_the_queued_requests_unloading() -> None:
    async with batcher(max_batch_size=1) as h:
        running, queued = h.send(1), h.send(2)
        await settle()
        await h.batcher.close(0.01)
        with pytest.raises(ModelNotReadyError, match="unloading"):
            answer(queued)
        assert h.batcher.queued_examples == 0
        assert not running.done(), "the running call is left behind, not failed"
        await h.run()
        assert answer(running) == [2]
        assert h.model.calls == [[1]]


class Outcomes(BatchSizes):
    """An observer that keeps each request's outcome as counted (success or failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.ok: list[bool] = []

    def request_finished(self, model: str, ok: bool, seconds: float) -> None:
        self.ok.append(ok)


async def test_a_call_that_returns_past_a_requests_deadline_answers_it_504() -> None:
    """The request's answer and its count agree: its call returned after its deadline, so it
    is a 504, counted as a failure (its result was counted a success, then made a 504)."""
    observer = Outcomes()
    async with batcher(max_batch_size=8, observer=observer) as h:
        loop = asyncio.get_running_loop()
        late = h.send(1, deadline=loop.time() + 0.05)
        in_time = h.send(2)
        await settle()
        await asyncio.sleep(0.1)  # the call is still running when the deadline passes
        await h.run()
        with pytest.raises(DeadlineExceededError):
            answer(late)
        assert answer(in_time) == [4]
        assert observer.ok == [False, True]
