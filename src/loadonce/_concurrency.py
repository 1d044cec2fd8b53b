"""Running predict calls off the event loop, under a model's concurrency policy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.to_thread

from loadonce._spec import Concurrency
from loadonce.runtimes._base import Predictor

T = TypeVar("T")


class Executor(ABC):
    """Hands a call one predictor instance, in a worker thread, as the policy allows.

    Created inside the event loop (at load time): the anyio primitives belong to it.
    """

    def __init__(self, instances: Sequence[Predictor]) -> None:
        self.instances = list(instances)

    @abstractmethod
    async def run(self, call: Callable[[Predictor], T]) -> T:
        """Run ``call(instance)`` in a thread and return its result."""


class SharedExecutor(Executor):
    """Concurrent calls on one thread-safe instance, at most ``threads`` at once."""

    def __init__(self, instance: Predictor, *, threads: int) -> None:
        super().__init__([instance])
        self._limiter = anyio.CapacityLimiter(threads)

    async def run(self, call: Callable[[Predictor], T]) -> T:
        return await anyio.to_thread.run_sync(call, self.instances[0], limiter=self._limiter)


class SerializedExecutor(Executor):
    """One call at a time. Waiters queue on the event loop (a fair lock), not in threads."""

    def __init__(self, instance: Predictor) -> None:
        super().__init__([instance])
        self._lock = anyio.Lock()

    async def run(self, call: Callable[[Predictor], T]) -> T:
        # A cancelled request still waits for its thread to finish (run_sync cannot abandon it),
        # so the lock is never released while the model is still running.
        async with self._lock:
            return await anyio.to_thread.run_sync(call, self.instances[0])


class PoolExecutor(Executor):
    """N instances, each used by one call at a time."""

    def __init__(self, instances: Sequence[Predictor]) -> None:
        super().__init__(instances)
        self._free: deque[Predictor] = deque(self.instances)
        self._available = anyio.Semaphore(len(self.instances))
        self._limiter = anyio.CapacityLimiter(len(self.instances))

    async def run(self, call: Callable[[Predictor], T]) -> T:
        async with self._available:
            # The semaphore guarantees an instance is free; deque ops run on the loop thread only.
            instance = self._free.popleft()
            try:
                return await anyio.to_thread.run_sync(call, instance, limiter=self._limiter)
            finally:
                self._free.append(instance)


def make_executor(policy: Concurrency, instances: Sequence[Predictor]) -> Executor:
    if policy.kind == "pool":
        return PoolExecutor(instances)
    if policy.kind == "serialized":
        return SerializedExecutor(instances[0])
    return SharedExecutor(instances[0], threads=policy.size)


def instances_needed(policy: Concurrency) -> int:
    """How many times the loader runs for one model in one worker."""
    return policy.size if policy.kind == "pool" else 1
