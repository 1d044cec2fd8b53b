"""The supervisor of ``--workers N``: start workers, open the port only when all loaded.

uvicorn's own multi-worker mode restarts a worker that fails at startup, forever, and lets the
first worker accept connections while the others still load. Here the supervisor binds the
socket without listening, starts the workers, and waits: each worker loads its models and
reports. Only when every worker has loaded does any of them listen. If one fails, every worker
is stopped and the server exits with that worker's one-line reason: no half-up server.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import signal
import socket
import tempfile
import time
from collections import deque
from dataclasses import replace
from multiprocessing import forkserver, resource_tracker
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

from loadonce.core.artifacts import ArtifactRoots
from loadonce.core.control import (
    NOT_TRIED,
    SERVER_STOPPING,
    SWITCHED_BACK,
    WORKER_EXITED,
    WORKER_GONE,
    ControlRequest,
    WorkerOutcome,
    changed_spec,
    declared_batching,
    describe_failed_round,
    describe_failures,
    failed_for_good,
)
from loadonce.core.errors import LoadonceError
from loadonce.http.metrics_directory import MULTIPROCESS_DIR
from loadonce.server.log_format import log_config
from loadonce.server.plan import make_plan, usable_cpus
from loadonce.server.settings import ServeConfig
from loadonce.server.sockets import (
    BindError,
    bind_without_listening,
    check_grpc_port,
    describe_address,
    warn_if_open_to_the_network,
)
from loadonce.server.stagger import LOCK_VARIABLE, allow_at_once
from loadonce.server.worker_process import (
    APPLIED,
    APPLY,
    CONTROL,
    FAILED,
    FAILED_LOAD,
    GO,
    RESULT,
    SHUTDOWN_FAILED,
    STARTED,
    STARTUP_FAILED,
    STOP,
    become_subreaper,
    crashed,
    did_not_start_in_time,
    reap_orphans,
    worker_main,
)
from loadonce.server.worker_process import WorkerProcess as _Worker
from loadonce.server.worker_start import worker_context

logger = logging.getLogger("loadonce")

# After SIGTERM, a worker has its drain timeout plus this to finish and unload, then is killed.
UNLOAD_GRACE_SECONDS = 10.0
_POLL_SECONDS = 0.5
# The operation id of a restoring load (``_restore``): the supervisor's own, never a worker's.
_RESTORE = "restore"
_REAP_SECONDS = 5.0


def _multiprocessing_helpers() -> set[int]:
    """The fork server's and the resource tracker's pids: multiprocessing waits for them."""
    pids = {
        getattr(forkserver._forkserver, "_forkserver_pid", None),
        getattr(resource_tracker._resource_tracker, "_pid", None),
    }
    return {pid for pid in pids if isinstance(pid, int)}


class _StartupFailedError(Exception):
    pass


def _not_attempted(worker: _Worker, why: str, serving: str = "") -> WorkerOutcome:
    """A worker the request did not reach; ``serving``: the version it goes on serving."""
    return WorkerOutcome(pid=worker.pid, ok=False, version=serving, state=NOT_TRIED, error=why)


class _StopWhilePlanning(Exception):  # noqa: N818 - a signal's way out, not an error
    """Raised by the stop signal's handler while the memory plan runs."""


def _with_the_operators_roots(config: ServeConfig) -> ServeConfig:
    """``config`` with the directories a control request may name artifacts under written
    out. Left unset, they are the configured artifacts' directories, read from the config
    the supervisor remembers, which a reload changes: after a reload to ``r/sub/m.skops``,
    a reload back to ``r/m.skops`` was refused by the supervisor's own bookkeeping (which
    then stopped the server) and by every replacement worker. They stay the operator's."""
    if config.server.artifact_roots is not None:
        return config
    roots = list(ArtifactRoots.of(config.models, None).roots)
    server = config.server.model_copy(update={"artifact_roots": roots})
    return config.model_copy(update={"server": server})


class Supervisor:
    def __init__(
        self, config: ServeConfig, *, memory_limit: int | None = None, force: bool = False
    ) -> None:
        self.config = _with_the_operators_roots(config)
        # The models as the operator declared them: a load "as declared" goes back to these,
        # whatever the remembered config (self.config) took from requests since.
        self._declared = {spec.name: spec for spec in config.models}
        self._memory_limit = memory_limit
        self._force = force
        self._context = worker_context(config)
        self._stopping = False
        self._stop_signal = ""  # the first stop signal's name
        self._planning = False
        self._socket: socket.socket | None = None
        # Control requests (load, unload, reload) waiting for their turn: (origin, message).
        self._controls: deque[tuple[_Worker, tuple[Any, ...]]] = deque()
        # Workers whose app's lifespan raised at shutdown: the server's status says it (1),
        # as a single worker's does.
        self._failed_shutdowns: list[int] = []

    def run(self) -> int:
        status = self._run()
        if status == 0 and self._failed_shutdowns:
            return SHUTDOWN_FAILED
        return status

    def _run(self) -> int:
        options = self.config.server
        logging.config.dictConfig(log_config(options.log_level, options.log_format, uvicorn=False))
        # Before the fork server starts: its orphaned children (workers) become ours.
        become_subreaper()
        workers: list[_Worker] = []
        # Every worker writes its metrics here, so that /metrics on any of them counts all.
        # Workers inherit the variable (through the fork server, which starts after this); the
        # directory is removed when the server ends.
        metrics_dir = tempfile.TemporaryDirectory(prefix="loadonce-metrics-")
        os.environ[MULTIPROCESS_DIR] = metrics_dir.name
        # Workers take turns to load (server/stagger.py), unless told not to.
        lock_dir = tempfile.TemporaryDirectory(prefix="loadonce-load-")
        if options.stagger_loading:
            os.environ[LOCK_VARIABLE] = os.path.join(lock_dir.name, "load.lock")
        try:
            self._socket = bind_without_listening(options.host, options.port)
            if options.grpc_port is not None:
                check_grpc_port(options.host, options.grpc_port)
            address = describe_address(self._socket)
            warn_if_open_to_the_network(self._socket, options.access(), options.allowed_hosts)
            # SIGHUP (a closed terminal or ssh session) stops as SIGTERM does: it killed the
            # supervisor at once, leaving its temporary directories behind. Installed before
            # the plan: a stop while it loads ended the supervisor by the signal's default
            # action (or click's "Aborted!"), its planning process loading on, orphaned.
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, self._ask_to_stop)
            if options.memory_plan:
                try:
                    self._planning = True
                    if not self._plan_fits():
                        return STARTUP_FAILED
                except _StopWhilePlanning:
                    logger.info("stopped while planning; no worker was started")
                    return 0
                finally:
                    self._planning = False
            logger.info(
                "supervisor pid %d starting %d workers for %s; each worker process "
                "loads its own copy of every model",
                os.getpid(),
                options.workers,
                address,
            )
            workers.extend(self._spawn() for _ in range(options.workers))
            self._wait_until_loaded(workers)
            if self._stopping:
                return self._stopped_before_serving("while the workers loaded their models")
            for worker in workers:
                self._release(worker)
            self._wait_until_started(workers)
            if self._stopping:
                return self._stopped_before_serving("while the workers started")
            logger.info(
                "all %d workers loaded and started; accepting connections on %s",
                len(workers),
                address,
            )
            self._supervise(workers)
            return 0
        except (_StartupFailedError, BindError) as failure:
            logger.error("startup failed: %s", failure)
            return STARTUP_FAILED
        finally:
            self._stop_all(workers)
            if self._socket is not None:
                self._socket.close()
            metrics_dir.cleanup()
            lock_dir.cleanup()

    def _plan_fits(self) -> bool:
        """Measure the models once before N workers load N copies (server/plan.py); a model
        that fails to load there fails the startup as it would in a worker."""
        try:
            plan = make_plan(self.config, self.config.server.workers, limit=self._memory_limit)
        except LoadonceError as failure:
            raise _StartupFailedError(str(failure)) from None
        if plan.fits:
            logger.info(
                "memory plan: %d workers need about %.0f MiB of %.0f MiB (%s)",
                plan.workers,
                plan.total / 2**20,
                plan.available.bytes / 2**20,
                plan.available.source,
            )
            if self.config.server.stagger_loading:
                at_once = plan.loads_at_once(usable_cpus())
                allow_at_once(at_once)
                logger.info(
                    "workers load %d at a time: each peaks at about %.0f MiB while it loads, "
                    "the server at about %.0f MiB",
                    at_once,
                    plan.load_peak_bytes / 2**20,
                    plan.startup_peak(at_once) / 2**20,
                )
            return True
        # A line per record: a record's line breaks are escaped (log lines cannot be forged),
        # which printed the table as one line full of \x0a.
        logger.error("memory plan:")
        for line in plan.table().splitlines():
            logger.error("%s", line)
        if self._force:
            logger.warning("starting anyway (--force)")
            return True
        logger.error("startup failed: the workers would not fit in memory (--force starts anyway)")
        return False

    def _ask_to_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        self._stop_signal = self._stop_signal or signal.Signals(signum).name
        if self._planning:  # out of the wait for the planning process, which is stopped
            self._planning = False
            raise _StopWhilePlanning

    def _stopped_before_serving(self, when: str) -> int:
        """The one line of a stop before the server served, and its status (0, as a stop's
        later on: the supervisor's, systemd's or Kubernetes' SIGTERM is no failure)."""
        logger.info("stopped by %s %s; nothing was served", self._stop_signal, when)
        return 0

    def _spawn(self) -> _Worker:
        assert self._socket is not None
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            args=(self.config, self._socket, theirs),
            name="loadonce-worker",
        )
        process.start()
        theirs.close()
        return _Worker(process=process, gate=ours)

    def _wait_until_loaded(self, workers: list[_Worker]) -> None:
        """Return when every worker reported loaded (or a stop was asked); raise on a failure."""
        while not self._stopping and not all(w.loaded for w in workers):
            waiting = [w for w in workers if not w.loaded]
            wait([w.gate for w in waiting], _POLL_SECONDS)
            for worker in waiting:
                try:
                    self._read_report(worker)
                except _StartupFailedError:
                    # Stopping: the workers got the signal too (systemd's to the whole
                    # service, a terminal's Ctrl-C) and left; the startup did not fail.
                    if not self._stopping:
                        raise

    def _read_report(self, worker: _Worker) -> None:
        try:
            if worker.gate.poll():
                kind, detail = worker.gate.recv()
                if kind == "loaded":
                    worker.loaded = True
                    return
                raise _StartupFailedError(detail)
        except (EOFError, OSError):
            pass  # the worker died without a word; its exit code says the rest
        if not worker.is_alive():
            raise _StartupFailedError(
                f"worker pid {worker.pid} {worker.describe_exit()} before it finished loading"
            )

    def _release(self, worker: _Worker) -> None:
        worker.gate.send(GO)
        worker.release()

    def _wait_until_started(self, workers: list[_Worker]) -> None:
        """Return when every released worker said it serves (its app's lifespan done: its
        heartbeats are judged from then on); raise when one exits first, or takes longer
        than ``startup_timeout_s``: a worker that cannot start is not restarted in a loop."""
        limit = self.config.server.startup_timeout_s
        while not self._stopping and not all(w.started for w in workers):
            starting = [w for w in workers if not w.started]
            wait([w.gate for w in starting], _POLL_SECONDS)
            for worker in starting:
                self._read_controls(worker, operation=None)
                if worker.started:
                    continue
                if not worker.is_alive() and not self._stopping:
                    # Its app's own lifespan failed after GO: the worker said why, in one
                    # line (its pipe is read once more: the word may have come with the end).
                    self._read_controls(worker, operation=None)
                    raise _StartupFailedError(
                        worker.failure
                        or f"worker pid {worker.pid} {worker.describe_exit()} before it "
                        "started serving (see the log above)"
                    )
                if worker.starting_for() > limit:
                    # Killed, not stopped: they serve nothing yet, and a lifespan blocked in
                    # a synchronous call would not see SIGTERM before the stop's grace ends.
                    for hung in starting:
                        hung.signal(signal.SIGKILL)
                    raise _StartupFailedError(did_not_start_in_time(worker.pid, limit))

    def _supervise(self, workers: list[_Worker]) -> None:
        """Replace a worker that dies or goes silent while serving; a replacement that cannot
        load stops all. Workers are watched through their pipes (a dead worker's pipe reads
        as closed) and the kernel, never through the fork server, which may be gone."""
        timeout = self.config.server.heartbeat_timeout_s
        next_reap = time.monotonic() + _REAP_SECONDS
        while not self._stopping:
            wait([w.gate for w in workers], _POLL_SECONDS)
            self._serve_controls(workers)
            for worker in workers:
                if worker.started and worker.is_alive() and worker.silent_for() > timeout:
                    # Read first: while a control round waited on one worker (a reload of
                    # 33 s), the others' heartbeats stayed in their pipes, and a healthy
                    # worker looked silent for the whole round.
                    self._read_controls(worker, operation=None)
                    if worker.silent_for() <= timeout:
                        continue
                    logger.error(
                        "worker pid %d sent no heartbeat for %.0f s (stopped, or its event "
                        "loop is blocked); killing it",
                        worker.pid,
                        worker.silent_for(),
                    )
                    worker.signal(signal.SIGKILL)
                    worker.join(5)
            if time.monotonic() >= next_reap:
                next_reap = time.monotonic() + _REAP_SECONDS
                reap_orphans(keep=_multiprocessing_helpers() | {w.pid for w in workers})
            for index, worker in enumerate(workers):
                if worker.is_alive() or self._stopping:
                    continue
                self._note_failed_shutdown(worker)
                if worker.exit_code == STARTUP_FAILED:
                    # It loaded but could not start serving (its gRPC port taken since):
                    # every replacement would fail the same way, in a loop of reloads.
                    raise _StartupFailedError(
                        f"worker pid {worker.pid} loaded but could not start serving (see "
                        "the log above)"
                    )
                logger.log(*_died_while_serving(worker))
                worker.gate.close()
                # Its per-worker gauges (state, memory) leave /metrics with it.
                _forget_metrics_of(worker.pid)
                replacement = self._spawn()
                workers[index] = replacement
                self._wait_until_loaded([replacement])
                if not self._stopping:
                    self._release(replacement)
                    self._wait_until_started([replacement])

    def _serve_controls(self, workers: list[_Worker]) -> None:
        """Run the control requests workers sent, one at a time, and answer each origin."""
        for worker in workers:
            if worker.serving:
                self._read_controls(worker, operation=None)
        while self._controls and not self._stopping:
            origin, (_, operation, request) = self._controls.popleft()
            request = request.as_declared(self._declared[request.model])
            outcomes = self._run_control(workers, operation, request)
            with contextlib.suppress(OSError):  # the worker that asked may have died since
                origin.gate.send((RESULT, operation, outcomes))

    def _read_controls(self, worker: _Worker, operation: str | None) -> WorkerOutcome | None:
        """Queue the control requests waiting on a worker's pipe; return the outcome of
        ``operation`` if it is among the messages."""
        found: WorkerOutcome | None = None
        try:
            while worker.gate.poll():
                message = worker.gate.recv()
                worker.heard()  # any message says the worker's loop runs
                if message[0] == CONTROL:
                    self._controls.append((worker, message))
                elif message[0] == STARTED:
                    worker.started = True
                elif message[0] == FAILED:
                    worker.failure = message[1]
                elif message[0] == APPLIED and message[1] == operation:
                    found = message[2]
        except (EOFError, OSError):
            pass  # a dead worker: the supervise loop replaces it
        return found

    def _run_control(
        self, workers: list[_Worker], operation: str, request: ControlRequest
    ) -> list[WorkerOutcome]:
        """Apply in each serving worker in turn; a failed load stops the round."""
        outcomes: list[WorkerOutcome] = []
        targets = [w for w in workers if w.serving and w.is_alive()]
        for worker in targets:
            if outcomes and not outcomes[-1].ok and request.action == "load":
                serving = self._serving_version(request.model)
                outcomes.append(_not_attempted(worker, "an earlier worker failed", serving))
                continue
            try:
                worker.gate.send((APPLY, operation, request))
            except OSError:
                outcomes.append(_not_attempted(worker, WORKER_GONE))
                continue
            outcome = self._await_applied(worker, operation)
            outcomes.append(outcome)
            if request.action == "load" and outcome.ok and request.matching is None:
                state = outcome.artifact_state
                if state is not None:
                    # The next workers load the bytes this one did, or fail the round.
                    request = replace(request, matching=(state, f"worker pid {outcome.pid}"))
        if outcomes and all(o.ok for o in outcomes):
            try:
                self._remember(request)
            except Exception:
                # Its bookkeeping must never stop the server: the workers serve the change.
                logger.exception(
                    "model '%s': the change was applied, but a replacement worker would start "
                    "from the config before it",
                    request.model,
                )
        else:
            # A load, or an unload, cut short: the workers it reached go back to what the
            # others serve (an unload that one worker's death cut short left the others
            # unloaded and its replacement loaded, for good).
            switched = [w for w, o in zip(targets, outcomes, strict=True) if o.ok]
            restored = self._restore(switched, request)
            # Each outcome says what its worker serves after the call: a switched-back
            # worker's said the new version (and `loadonce reload` printed it as loaded).
            outcomes = [restored.get(o.pid, o) for o in outcomes]
        if all(o.ok for o in outcomes):
            logger.info(
                "%s of model '%s' in %d workers: done", request.action, request.model, len(outcomes)
            )
        else:
            # Every worker's part, and what it serves now: the workers not tried log nothing.
            logger.error(
                "%s of model '%s' in %d workers FAILED: %s",
                request.action,
                request.model,
                len(outcomes),
                describe_failures(outcomes),
            )
        if failed_for_good(outcomes):
            self._tell_the_failure(targets, operation, request, outcomes)
        return outcomes

    def _tell_the_failure(
        self,
        workers: list[_Worker],
        operation: str,
        request: ControlRequest,
        outcomes: list[WorkerOutcome],
    ) -> None:
        """Each worker says the failed load as its model's error, each worker's part in it:
        only the worker that tried said it, and /models, the repository index and a
        model's page answered "no error" or the error by the worker a connection reached."""
        message = describe_failed_round(request, outcomes)
        artifacts = [] if request.artifact is None else [request.artifact]
        for worker in workers:
            if worker.serving and worker.is_alive():
                with contextlib.suppress(OSError):  # it died since: its replacement loads anew
                    worker.gate.send((FAILED_LOAD, operation, (request.model, message, artifacts)))

    def _restore(self, switched: list[_Worker], failed: ControlRequest) -> dict[int, WorkerOutcome]:
        """Bring the workers a failed load round had already switched back to what the others
        serve (the remembered config, which replacements start from too): a load that failed
        in the second worker left the first on the new version for good, and answers then
        depended on the worker a connection reached. Returns each switched worker's outcome
        as it stands after (not ok: the request's change is undone there)."""
        restored: dict[int, WorkerOutcome] = {}
        if not switched:
            return restored
        restore = self._restoring(failed.model)
        logger.warning(
            "model '%s': the %s failed in a worker; restoring %d worker(s) to what the others "
            "serve",
            failed.model,
            failed.action,
            len(switched),
        )
        for worker in switched:
            try:
                worker.gate.send((APPLY, _RESTORE, restore))
            except OSError:
                continue  # it died: its replacement starts from the remembered config
            outcome = self._await_applied(worker, _RESTORE)
            restored[worker.pid] = WorkerOutcome(
                pid=worker.pid,
                ok=False,
                version=outcome.version,
                state=outcome.state,
                error=SWITCHED_BACK if outcome.ok else f"{SWITCHED_BACK}: {outcome.error}",
            )
            if not outcome.ok:
                logger.error(
                    "model '%s': worker pid %d could not be restored (%s); stopping it, its "
                    "replacement loads what the others serve",
                    failed.model,
                    worker.pid,
                    outcome.error,
                )
                worker.signal(signal.SIGTERM)
        return restored

    def _restoring(self, name: str) -> ControlRequest:
        """The request that makes a worker serve ``name`` as the remembered config says."""
        if name in self.config.unloaded:
            return ControlRequest(action="unload", model=name)
        spec = next(spec for spec in self.config.models if spec.name == name)
        # Its batching as the remembered spec says: a failed request that changed the
        # batching (a repository load's config) left it changed.
        return ControlRequest(
            action="load",
            model=name,
            artifact=None if spec.artifact is None else str(spec.artifact),
            version=spec.version,
            sha256=spec.sha256 if spec.artifact is not None else None,
            batching=declared_batching(spec),
        )

    def _await_applied(self, worker: _Worker, operation: str) -> WorkerOutcome:
        while not self._stopping:
            wait([worker.gate], _POLL_SECONDS)
            outcome = self._read_controls(worker, operation)
            if outcome is not None:
                return outcome
            if not worker.is_alive():
                return _not_attempted(worker, WORKER_EXITED)
        return _not_attempted(worker, SERVER_STOPPING)

    def _serving_version(self, name: str) -> str:
        """The version of ``name`` the workers serve (the one replacements start with)."""
        return next((spec.version for spec in self.config.models if spec.name == name), "")

    def _remember(self, request: ControlRequest) -> None:
        """Keep what every worker now serves as the config that replacements start from."""
        config = self.config
        unloaded = [name for name in config.unloaded if name != request.model]
        models = config.models
        if request.action == "unload":
            unloaded.append(request.model)
        elif request.changes:
            roots = ArtifactRoots.of(
                models,
                config.server.artifact_roots,
                max_bytes=config.server.max_artifact_bytes or None,
            )
            models = [
                changed_spec(spec, request, roots) if spec.name == request.model else spec
                for spec in models
            ]
        declared = list(self._declared.values())
        self.config = config.model_copy(
            update={"models": models, "unloaded": unloaded, "declared": declared}
        )

    def _stop_all(self, workers: list[_Worker]) -> None:
        # The listening socket is one, shared with the workers: while this process holds it
        # open the kernel goes on accepting connections into its backlog after every worker
        # stopped accepting, and they hang there until the drain ends. Workers keep their own
        # copies; this one is needed only to start workers.
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        for worker in workers:
            if worker.is_alive():
                if not worker.serving:
                    with contextlib.suppress(OSError):
                        worker.gate.send(STOP)  # a worker waiting for GO leaves at once
                worker.signal(signal.SIGTERM)  # uvicorn finishes in-flight requests
        options = self.config.server
        deadline = (
            time.monotonic() + options.stop_delay_s + options.drain_timeout_s + UNLOAD_GRACE_SECONDS
        )
        for worker in workers:
            if not worker.join(max(0.0, deadline - time.monotonic())):
                logger.warning("worker pid %d did not stop in time; killing it", worker.pid)
                worker.signal(signal.SIGKILL)
                worker.join(10)
            worker.gate.close()
            self._note_failed_shutdown(worker)

    def _note_failed_shutdown(self, worker: _Worker) -> None:
        """One line for a worker that ended saying its app's shutdown failed (uvicorn
        logged the app's traceback above it)."""
        if worker.started and worker.final_exit_code() == SHUTDOWN_FAILED:
            logger.error("worker pid %d: the app's shutdown failed (see the log above)", worker.pid)
            self._failed_shutdowns.append(worker.pid)


def _forget_metrics_of(pid: int) -> None:
    """A dead worker's live gauges leave the workers' metrics (prometheus-client's own way;
    imported here, when a worker died: the supervisor serves no metrics itself)."""
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _died_while_serving(worker: _Worker) -> tuple[int, str]:
    """The level and line of a serving worker's unasked end: what the requests it held in
    flight got (no answer: their connections closed), and for a crash, where its report is."""
    line = (
        f"worker pid {worker.pid} {worker.describe_exit()} while serving (the requests in "
        "flight on it got no answer)"
    )
    if crashed(worker.exit_code):
        # A model's native code, most often: Python's fault handler wrote the worker's
        # frames to its stderr, just above.
        return logging.ERROR, f"{line}: it crashed (its stack is above); starting a replacement"
    if worker.exit_code == -signal.SIGKILL:
        return logging.ERROR, f"{line} (the out-of-memory killer?); starting a replacement"
    return logging.WARNING, f"{line}; starting a replacement"
