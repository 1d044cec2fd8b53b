"""Model control across ``--workers N``: a request to any worker reaches every worker.

Each worker keeps the pipe it reported "loaded" on. A worker that gets a load, unload or
reload request sends it up the pipe; the supervisor hands it to each serving worker in turn
(a rolling reload: one worker loads the new version at a time, so the memory peak is one
extra copy, and the others serve meanwhile), gathers each worker's outcome, and answers the
worker that asked. A reload that fails in one worker is not tried in the next ones, so the
workers never drift apart on a broken artifact. The supervisor also keeps the result as the
config that replacement workers start from: a worker started after a reload loads the new
version, and one started after an unload leaves the model unloaded. A load that failed is
told to every worker, each worker's part in it, so that any worker's answers say it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import signal
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from loadonce.core.control import (
    DRAINING_POLL_S,
    SERVER_STOPPING,
    ControlInterruptedError,
    ControlRequest,
    WorkerOutcome,
    apply_locally,
    changed_spec,
    check_not_interrupted,
)
from loadonce.server.worker_process import (
    APPLIED,
    APPLY,
    CONTROL,
    FAILED_LOAD,
    HEARTBEAT,
    HEARTBEAT_INTERVAL_S,
    RESULT,
    STARTED,
)

if TYPE_CHECKING:
    from loadonce.core.registry import Registry  # the worker's; the supervisor holds none

logger = logging.getLogger("loadonce")


class SupervisedControl:
    """The ``ModelControl`` of a worker under the supervisor."""

    def __init__(self, gate: Connection, registry: Registry) -> None:
        self._gate = gate
        self._registry = registry
        self._send_lock = threading.Lock()  # the loop and the reader thread both send
        self._pending: dict[str, asyncio.Future[list[WorkerOutcome]]] = {}
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        # The supervisor's request this worker is applying (a load may take minutes).
        self._applying: concurrent.futures.Future[WorkerOutcome] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read the supervisor's messages from now on (after GO: the pipe is ours alone), and
        send it a heartbeat from the event loop every HEARTBEAT_INTERVAL_S."""
        self._loop = loop
        threading.Thread(target=self._read_forever, name="loadonce-control", daemon=True).start()
        self._heartbeat = loop.create_task(self._beat_forever(), name="loadonce-heartbeat")
        self._watch = loop.create_task(self._abandon_when_stopping(), name="loadonce-stop-watch")

    def announce_started(self) -> None:
        """Tell the supervisor this worker serves: from now on it judges its heartbeats."""
        self._send((STARTED, os.getpid(), None))

    async def _abandon_when_stopping(self) -> None:
        """Once the worker stops, the load it applies for the supervisor is abandoned: the
        stop waited for it (up to load_timeout_s, 600 s) before the worker could unload,
        whatever drain_timeout_s said, and the supervisor then killed the worker."""
        while not self._registry.draining:
            await asyncio.sleep(DRAINING_POLL_S)
        applying = self._applying
        if applying is not None and not applying.done():
            logger.warning(
                "worker pid %d: stopping; abandoning the model load it was applying",
                os.getpid(),
            )
            applying.cancel()

    async def _beat_forever(self) -> None:
        # From the loop itself: a loop that is blocked (or a stopped process) sends nothing.
        pid = os.getpid()
        while True:
            try:
                self._send((HEARTBEAT, pid, None))
            except OSError:
                return  # the supervisor is gone: _read_forever stops the worker
            await asyncio.sleep(HEARTBEAT_INTERVAL_S)

    async def apply(self, request: ControlRequest) -> list[WorkerOutcome]:
        model = self._registry.get(request.model)  # 404 before anything is sent
        # A 400 or 403 too. A "declared" batching is the supervisor's to read (this worker may
        # have started from a changed spec), and any declared batching is valid: as this
        # worker's for the check.
        checked = request.as_declared(model.declared_spec)
        changed_spec(model.spec, checked, self._registry.artifact_roots)
        loop = asyncio.get_running_loop()
        operation = f"{os.getpid()}-{next(self._ids)}"
        future: asyncio.Future[list[WorkerOutcome]] = loop.create_future()
        self._pending[operation] = future
        try:
            if self._registry.draining:
                raise ControlInterruptedError(f"{SERVER_STOPPING}; try again")
            self._send((CONTROL, operation, request))
            # A supervisor that is stopping answers no more requests: once this worker drains
            # too, it stops waiting (it waited out the whole drain, holding the shutdown).
            while not future.done():
                await asyncio.wait({future}, timeout=DRAINING_POLL_S)
                if self._registry.draining and not future.done():
                    raise ControlInterruptedError(f"{SERVER_STOPPING}; try again")
            outcomes = future.result()
            check_not_interrupted(outcomes)
            return outcomes
        finally:
            self._pending.pop(operation, None)

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._gate.send(message)

    def _read_forever(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            try:
                kind, operation, payload = self._gate.recv()
            except (EOFError, OSError):
                # The supervisor is gone (or stopping us): a worker never serves unsupervised,
                # and never outlives its supervisor as an orphan holding the port.
                if not self._registry.draining:
                    logger.warning("worker pid %d: the supervisor is gone; stopping", os.getpid())
                    os.kill(os.getpid(), signal.SIGTERM)
                return
            if kind == APPLY:
                running = asyncio.run_coroutine_threadsafe(
                    apply_locally(self._registry, payload), loop
                )
                self._applying = running
                try:
                    outcome = running.result()
                except concurrent.futures.CancelledError:  # the worker is stopping
                    outcome = WorkerOutcome(
                        pid=os.getpid(), ok=False, version="", state="", error=SERVER_STOPPING
                    )
                finally:
                    self._applying = None
                try:
                    self._send((APPLIED, operation, outcome))
                except OSError:
                    return  # the supervisor is gone
            elif kind == RESULT:
                loop.call_soon_threadsafe(self._resolve, operation, payload)
            elif kind == FAILED_LOAD:
                loop.call_soon_threadsafe(self._note_failure, *payload)

    def _note_failure(self, name: str, message: str, artifacts: list[str]) -> None:
        self._registry.get(name).note_failed_change(message, artifacts)

    def _resolve(self, operation: str, outcomes: list[WorkerOutcome]) -> None:
        future = self._pending.get(operation)
        if future is not None and not future.done():
            future.set_result(outcomes)
