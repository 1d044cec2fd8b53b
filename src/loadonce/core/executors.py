"""Running predict calls off the event loop, under a model's concurrency policy.

Each loaded model gets its own thread pool, sized by its policy. A call is handed to the pool
at once (``submit``, a plain function, not a coroutine): under load the event loop is late to
run anything it schedules, and a hand-off that waited for a task to start would leave the
model idle for that long between two batches.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from loadonce.core.spec import Concurrency
from loadonce.runtimes._base import Predictor

T = TypeVar("T")


class _DaemonThreads:
    """A thread pool whose threads never keep the process alive.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits: one
    model call that never returns kept a worker from ever exiting, SIGTERM included. A hung
    call is noticed and contained by the batcher (``hang_timeout_s``); its thread is left to
    the process's end. Threads start on demand, up to ``max_workers``.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self._max = max_workers
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._work = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for a call
        self._pending = 0  # calls (and stop markers) queued, not yet taken
        self._lock = threading.Lock()
        self._shut = False

    def submit(self, function: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new calls after shutdown")
            self._work.put((future, function, args))
            self._pending += 1
            # A new thread only when the waiting ones cannot take every queued call.
            if self._pending > self._idle and len(self._threads) < self._max:
                thread = threading.Thread(
                    target=self._run, name=f"{self._prefix}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._work.get()
            with self._lock:
                self._idle -= 1
                self._pending -= 1
            if item is None:
                return
            future, function, args = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            del item, future, function, args  # nothing of a finished call stays alive here

    def shutdown(self) -> None:
        """Threads exit once the calls queued so far are done; nothing waits for them."""
        with self._lock:
            self._shut = True
            for _ in self._threads:
                self._work.put(None)
                self._pending += 1


class Executor(ABC):
    """Hands a call one predictor instance, in one of the model's threads, as the policy allows."""

    def __init__(self, instances: Sequence[Predictor], *, threads: int, name: str) -> None:
        self.instances = list(instances)
        # How many calls can run at once (the batcher frees a hung call's slot only while
        # a thread is left).
        self.threads = threads
        self._threads = _DaemonThreads(max_workers=threads, thread_name_prefix=name)

    @abstractmethod
    def submit(self, call: Callable[[Predictor], T]) -> Future[T]:
        """Queue ``call(instance)`` for one of the model's threads now; the future holds its
        result. Callable from any thread; the loop needs ``asyncio.wrap_future`` to await it."""

    def shutdown(self) -> None:
        """Let the threads exit once idle (calls still running finish first)."""
        self._threads.shutdown()


class SharedExecutor(Executor):
    """Concurrent calls on one thread-safe instance, at most ``threads`` at once."""

    def submit(self, call: Callable[[Predictor], T]) -> Future[T]:
        return self._threads.submit(call, self.instances[0])


class SerializedExecutor(Executor):
    """One call at a time: a single thread, so calls wait in its queue, never overlap, and
    one cancelled before it starts never runs."""

    def __init__(self, instance: Predictor, *, name: str) -> None:
        super().__init__([instance], threads=1, name=name)

    def submit(self, call: Callable[[Predictor], T]) -> Future[T]:
        return self._threads.submit(call, self.instances[0])


class PoolExecutor(Executor):
    """N instances, each used by one call at a time: N threads, each taking a free instance
    for its call and putting it back after. With as many threads as instances, a thread
    always finds one free."""

    def __init__(self, instances: Sequence[Predictor], *, name: str) -> None:
        super().__init__(instances, threads=len(instances), name=name)
        self._free: queue.SimpleQueue[Predictor] = queue.SimpleQueue()
        for instance in self.instances:
            self._free.put(instance)

    def submit(self, call: Callable[[Predictor], T]) -> Future[T]:
        return self._threads.submit(self._with_free_instance, call)

    def _with_free_instance(self, call: Callable[[Predictor], T]) -> T:
        # Put back when the thread is done with it, whatever the caller does meanwhile: a
        # caller that stopped waiting must not hand a busy instance to the next call.
        instance = self._free.get_nowait()
        try:
            return call(instance)
        finally:
            self._free.put(instance)


def make_executor(policy: Concurrency, instances: Sequence[Predictor], *, name: str) -> Executor:
    prefix = f"loadonce-{name}"
    if policy.kind == "pool":
        return PoolExecutor(instances, name=prefix)
    if policy.kind == "serialized":
        return SerializedExecutor(instances[0], name=prefix)
    return SharedExecutor(instances[:1], threads=policy.size, name=prefix)


def instances_needed(policy: Concurrency) -> int:
    """How many times the loader runs for one model in one worker."""
    return policy.size if policy.kind == "pool" else 1
