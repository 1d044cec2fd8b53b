"""Running predict calls off the event loop, under a model's concurrency policy.

Each loaded model gets its own thread pool, sized by its policy. A call is handed to the pool
at once (``submit``, a plain function, not a coroutine): under load the event loop is late to
run anything it schedules, and a hand-off that waited for a task to start would leave the
model idle for that long between two batches.
"""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from loadonce._spec import Concurrency
from loadonce.runtimes._base import Predictor

T = TypeVar("T")


class Executor(ABC):
    """Hands a call one predictor instance, in one of the model's threads, as the policy allows."""

    def __init__(self, instances: Sequence[Predictor], *, threads: int, name: str) -> None:
        self.instances = list(instances)
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    @abstractmethod
    def submit(self, call: Callable[[Predictor], T]) -> Future[T]:
        """Queue ``call(instance)`` for one of the model's threads now; the future holds its
        result. Callable from any thread; the loop needs ``asyncio.wrap_future`` to await it."""

    def shutdown(self) -> None:
        """Let the threads exit once idle (calls still running finish first)."""
        self._threads.shutdown(wait=False)


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
