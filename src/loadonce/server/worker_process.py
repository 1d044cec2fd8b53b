"""A worker process as the supervisor sees it: alive or not, asked of the system itself.

Workers are children of multiprocessing's fork server, and ``Process.is_alive()`` learns a
child's end through that server. When the fork server died (an OOM kill), every worker looked
dead (exit code 255): the supervisor started extra workers beside the live ones, which went on
serving the port as orphans. Here the supervisor is the workers' subreaper (an orphaned worker
becomes its child, Linux's ``PR_SET_CHILD_SUBREAPER``), tracks each worker by its pid, and
asks the kernel whether it lives, reaping it when it is its own child.

Heartbeats: a serving worker's event loop sends one every ``HEARTBEAT_INTERVAL_S``; a worker
silent for longer than ``heartbeat_timeout_s`` (stopped with SIGSTOP, or its loop blocked)
is killed and replaced. They are judged only once the worker said it ``STARTED`` serving:
until then its loop may be blocked by the app's own lifespan (a synchronous migration), and
a worker killed for it, then its replacement, and so on, made a restart loop that never
served. Startup is bounded by ``startup_timeout_s`` instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, NoReturn

import psutil

from loadonce.server.early_stop import StoppedEarly, stop_early_on_signals

if TYPE_CHECKING:
    import socket

    from loadonce.server.settings import ServeConfig

logger = logging.getLogger("loadonce")

# uvicorn's own exit status for a failed startup; loadonce uses it too, for one meaning.
STARTUP_FAILED = 3
# The status of a server (and of a worker) that served, then whose app's lifespan raised at
# shutdown.
SHUTDOWN_FAILED = 1


def did_not_start_in_time(pid: int, limit_s: float) -> str:
    """The one line of a worker that loaded its models but was not serving ``limit_s``
    (``startup_timeout_s``) later: said alike with one worker and with several."""
    return (
        f"worker pid {pid} loaded its models but did not start serving within "
        f"startup_timeout_s ({limit_s:g} s): the app's own lifespan startup did not finish"
    )


def exit_leaving_threads(code: int) -> NoReturn:
    """End this process now with ``code``, the log written out, without waiting for its
    threads: a load abandoned at ``load_timeout_s`` may run on in its thread for good, and a
    normal exit joins every thread first (a hung load kept the server from ever exiting)."""
    logging.shutdown()  # flushes and closes every handler
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def how_it_ended(code: int | None) -> str:
    """A process's end from its exit status (multiprocessing's: minus the signal's number
    for a death by signal): "exited with code 7", "was killed by SIGSEGV", or "exited"
    when the status is unknown."""
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# The signals a process gets from its own fault (a crash in native code, or the interpreter's
# abort), rather than from someone else.
_CRASHES = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT})


def crashed(code: int | None) -> bool:
    """Whether an exit status says the process crashed (its own fault signal)."""
    return code is not None and code < 0 and -code in _CRASHES


# The supervisor's word to a loaded worker: serve, or leave.
GO = "go"
STOP = "stop"

HEARTBEAT = "alive"
# A worker's word once it serves (its lifespan done, listening): heartbeats count from then.
STARTED = "started"
# A worker's word when it cannot serve, with its one line: ("failed", why).
FAILED = "failed"
HEARTBEAT_INTERVAL_S = 1.0

# Model control on a worker's pipe (tuples, server/control_channel.py): worker -> supervisor
# ("control", op, request) and ("applied", op, outcome); supervisor -> worker ("apply", op,
# request) and ("result", op, outcomes).
CONTROL, APPLY, APPLIED, RESULT = "control", "apply", "applied", "result"
# supervisor -> every serving worker ("load failed", op, (model, message, artifacts)): a load that
# failed in some worker, for each to say as its model's error (Model.note_failed_change).
FAILED_LOAD = "load failed"
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants (workers whose fork server died) children of this process."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            logger.debug("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())


def _state_of(pid: int) -> str | None:
    """The kernel's state letter for ``pid`` (R, S, T, Z...), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return None


@dataclass(kw_only=True)
class WorkerProcess:
    process: BaseProcess
    gate: Connection
    loaded: bool = False
    # Told to serve (GO sent); ``started`` once it said it serves.
    serving: bool = False
    started: bool = False
    released_at: float = 0.0
    last_heard: float = field(default_factory=time.monotonic)
    _exit: str | None = None
    # Its exit status, once it ended and the status could be read (None: unknown).
    exit_code: int | None = None
    # Why it could not serve, as it said it (FAILED), once it did.
    failure: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def heard(self) -> None:
        self.last_heard = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.last_heard

    def release(self) -> None:
        """GO was sent: it starts serving now (its app's lifespan, then listening)."""
        self.serving = True
        self.released_at = time.monotonic()

    def starting_for(self) -> float:
        return time.monotonic() - self.released_at

    def is_alive(self) -> bool:
        if self._exit is not None:
            return False
        with contextlib.suppress(ChildProcessError):
            # Our child once its fork server died and it was reparented to us.
            waited, status = os.waitpid(self.pid, os.WNOHANG)
            if waited:
                self.exit_code = os.waitstatus_to_exitcode(status)
                self._exit = how_it_ended(self.exit_code)
                return False
        state = _state_of(self.pid)
        if state is None or state in ("Z", "X"):
            self.exit_code = self.process.exitcode if state is None else None
            self._exit = "exited"
            # A zombie's status is its fork server's to read: it tells it in a moment (the
            # log said only "exited" of a worker that had crashed, or exited with code 7).
            self._exit = how_it_ended(self.final_exit_code())
            return False
        return True

    def final_exit_code(self) -> int | None:
        """Its exit status once it ended, waiting briefly for the fork server to tell it
        when the kernel showed only its zombie (None: unknown, the fork server gone)."""
        if self.exit_code is None and self._exit is not None:
            with contextlib.suppress(Exception):
                self.process.join(1)
                self.exit_code = self.process.exitcode
        return self.exit_code

    def describe_exit(self) -> str:
        return self._exit or "is running"

    def signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the process to end; whether it did."""
        deadline = time.monotonic() + timeout
        while self.is_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def reap_orphans(keep: set[int]) -> None:
    """Reap the zombies among this process's children other than ``keep`` (the fork server
    and the resource tracker, which multiprocessing waits for itself): as the workers'
    subreaper, the supervisor inherits whatever a dead worker left running, and must not
    collect their ends forever."""
    for child in psutil.Process().children():
        if child.pid in keep:
            continue
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)


def worker_main(config: ServeConfig, sock: socket.socket, gate: Connection) -> None:
    """What a worker process runs (``worker.worker_process_main``), named here: the supervisor
    hands the function to multiprocessing, and this module imports none of the worker's stack
    (the app, uvicorn, the models' libraries), which the supervisor never needs.

    A stop signal before the worker's own handlers (importing that stack, building the app:
    a terminal's Ctrl-C, or systemd's SIGTERM to every process of the service) ends it by the
    signal, as before, without the KeyboardInterrupt traceback SIGINT printed: the supervisor
    says why (``server/early_stop.py``)."""
    stop_early_on_signals()
    try:
        from loadonce.server.worker import worker_process_main

        worker_process_main(config, sock, gate)
    except StoppedEarly as stop:
        signal.signal(stop.signum, signal.SIG_DFL)
        logging.shutdown()
        signal.raise_signal(stop.signum)
