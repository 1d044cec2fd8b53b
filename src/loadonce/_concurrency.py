"""Running predict calls off the event loop, under a model's concurrency policy.

Each loaded model gets its own thread pool, sized by its policy, and calls reach it through
``loop.run_in_executor``: the cheapest hand-off asyncio has, which matters because a tiny
model's throughput is bounded by the event loop's work per call.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from loadonce._spec import Concurrency
from loadonce.runtimes._base import Predictor

T = TypeVar("T")


class Executor(ABC):
    """Hands a call one predictor instance, in one of the model's threads, as the policy allows.

    Created inside the event loop (at load time): the asyncio primitives belong to it.
    """

    def __init__(self, instances: Sequence[Predictor], *, threads: int, name: str) -> None:
        self.instances = list(instances)
        self._threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    @abstractmethod
    async def run(self, call: Callable[[Predictor], T]) -> T:
        """Run ``call(instance)`` in a thread and return its result."""

    def shutdown(self) -> None:
        """Let the threads exit once idle (calls still running finish first)."""
        self._threads.shutdown(wait=False)


class SharedExecutor(Executor):
    """Concurrent calls on one thread-safe instance, at most ``threads`` at once."""

    async def run(self, call: Callable[[Predictor], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, call, self.instances[0])


class SerializedExecutor(Executor):
    """One call at a time: a single thread, so calls wait in its queue, never overlap, and
    one cancelled before it starts never runs."""

    def __init__(self, instance: Predictor, *, name: str) -> None:
        super().__init__([instance], threads=1, name=name)

    async def run(self, call: Callable[[Predictor], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, call, self.instances[0])


class PoolExecutor(Executor):
    """N instances, each used by one call at a time."""

    def __init__(self, instances: Sequence[Predictor], *, name: str) -> None:
        super().__init__(instances, threads=len(instances), name=name)
        self._free: deque[Predictor] = deque(self.instances)
        self._available = asyncio.Semaphore(len(self.instances))

    async def run(self, call: Callable[[Predictor], T]) -> T:
        await self._available.acquire()
        instance = self._free.popleft()
        loop = asyncio.get_running_loop()

        def release() -> None:
            self._free.append(instance)
            self._available.release()

        # Freed when the thread is done with it, not when the caller stops waiting: a caller
        # cancelled mid-call must not hand a busy instance to the next one.
        running = self._threads.submit(call, instance)
        running.add_done_callback(lambda _: loop.call_soon_threadsafe(release))
        return await asyncio.wrap_future(running)


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
