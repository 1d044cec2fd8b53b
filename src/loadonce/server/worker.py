"""One worker process: build the app, run uvicorn, and report a failed startup in one line."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import logging.config
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

import anyio.to_thread
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loadonce.app import create_app
from loadonce.core.control import ModelControl
from loadonce.core.errors import describe_exception
from loadonce.core.model import Model
from loadonce.core.registry import Registry
from loadonce.http.lifespan import lifespan_of
from loadonce.server.allocator import map_large_blocks
from loadonce.server.control_channel import SupervisedControl
from loadonce.server.early_stop import STOP_SIGNALS, hand_over, stop_early_on_signals
from loadonce.server.http_protocol import guarded_protocol
from loadonce.server.log_format import log_config
from loadonce.server.progress import load_progress
from loadonce.server.settings import ServeConfig, ServerOptions
from loadonce.server.sockets import (
    BindError,
    bind_without_listening,
    check_grpc_port,
    describe_address,
    warn_if_open_to_the_network,
)
from loadonce.server.stagger import one_worker_at_a_time
from loadonce.server.user_app import load_app, serve_user_app
from loadonce.server.websocket_protocol import guarded_websocket_protocol
from loadonce.server.worker_process import (
    FAILED,
    GO,
    SHUTDOWN_FAILED,
    STARTUP_FAILED,
    STOP,
    did_not_start_in_time,
    exit_leaving_threads,
)

logger = logging.getLogger("loadonce")


class _OneLineStartupFailure:
    """Starlette reports a failed lifespan to uvicorn with a full traceback. When the cause is
    a model that failed to load, the traceback says nothing the one-line message does not, so
    it is replaced by nothing and the worker logs (or reports) that line instead. When the
    app's own lifespan raised (its database unreachable), the line is "the app's startup
    failed: <the exception>", as the memory plan's child says it with several workers, and
    the traceback is logged at debug level (``--log-level debug``): one worker logged it in
    full, before a line saying "see the log above"."""

    def __init__(self, app: ASGIApp, registry: Registry) -> None:
        self.app = app
        self.registry = registry
        # The app's own startup failure, in one line (None: none, or a model's).
        self.app_failure: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_quietly(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                # Starlette sends it while handling the lifespan's exception.
                cause = sys.exc_info()[1]
                if self.registry.failure is None and cause is not None:
                    self.app_failure = f"the app's startup failed: {describe_exception(cause)}"
                    logger.debug("the app's startup failed", exc_info=cause)
                if self.registry.failure is not None or self.app_failure is not None:
                    message = {**message, "message": ""}
            await send(message)

        await self.app(scope, receive, send_quietly)


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the registry when a stop begins so /readyz turns 503 while
    accepted requests finish (uvicorn stops listening and drains them)."""

    def __init__(self, config: uvicorn.Config, registry: Registry, stop_delay_s: float) -> None:
        super().__init__(config)
        self.registry = registry
        self.stop_delay_s = stop_delay_s
        # The worker's other listeners (gRPC), stopped when uvicorn stops listening.
        self.also_stop: list[Callable[[], None]] = []
        # Called once it listens, the app's lifespan done: the single worker's announcement,
        # a supervised worker's STARTED.
        self.on_started: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the lifespan, then listening
        if self.started and not self.should_exit:
            for started in self.on_started:
                started()

    @property
    def shutdown_failed(self) -> bool:
        """The app's lifespan raised at shutdown (uvicorn logged it)."""
        return self.started and self.lifespan.should_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's (SIGINT, SIGTERM), and SIGHUP, taken as SIGTERM: a closed terminal or
        ssh session killed the server at once (status 129), cutting off requests in flight
        and leaving its temporary directories behind."""
        if threading.current_thread() is threading.main_thread():
            hand_over()  # uvicorn's from here (server/early_stop.py)
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = signal.signal(signal.SIGHUP, self._hung_up)
            try:
                yield
            finally:
                signal.signal(signal.SIGHUP, previous)

    def _hung_up(self, sig: int, frame: FrameType | None) -> None:
        self.handle_exit(signal.SIGTERM, frame)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: Python runs it on the main thread, the event loop's, between any
        # two of its bytecodes, maybe while that thread holds a lock (a condition's, the one
        # threading takes to start a thread, the log's): taking one here could wait forever
        # (a worker once hung on SIGTERM so). It only hands the signal to the loop, which acts
        # on it as on any other callback; uvicorn's own handling, without a loop, sets flags.
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._on_stop_signal, sig)
                return
            except RuntimeError:  # the loop has closed: nothing is left to drain
                pass
        super().handle_exit(sig, frame)

    def _on_stop_signal(self, sig: int) -> None:
        if not self.started:
            # Still starting: its models loading (for up to load_timeout_s), nothing served
            # yet, nothing to drain. The stop waited for every load to end first (18 s of a
            # 20 s load, then "accepting connections" in the log before it stopped).
            logger.info("stopped while starting (loading its models): the loads are abandoned")
            exit_leaving_threads(0)
        if not self.registry.draining:
            self.registry.start_draining()
            if sig == signal.SIGTERM and self.stop_delay_s > 0:
                # An orchestrator's SIGTERM: keep serving, with /readyz at 503, so that its
                # readiness probe sees the worker leave before the listener closes. (Ctrl-C,
                # SIGINT, stops at once; a second SIGTERM too.)
                logger.info(
                    "stopping in %g s (stop_delay_s): /readyz answers 503 meanwhile; then "
                    "finishing accepted requests, then unloading",
                    self.stop_delay_s,
                )
                asyncio.get_running_loop().call_later(self.stop_delay_s, self._stop_listening, sig)
                return
            logger.info("stopping: finishing accepted requests, then unloading")
        self._stop_listening(sig)

    def stop_listening(self) -> None:
        """Stop accepting (HTTP and gRPC), finish what was accepted, then shut down."""
        self._stop_listening(None)

    def _stop_listening(self, sig: int | None) -> None:
        # Every listener at once: gRPC's calls would otherwise be taken until the lifespan
        # ends, after the HTTP requests in flight finished.
        for stop in self.also_stop:
            stop()
        if sig is None:
            self.should_exit = True
        else:
            # uvicorn's: a second SIGINT forces the exit; the signal is raised again at exit.
            super().handle_exit(sig, None)


def run_worker(
    config: ServeConfig,
    *,
    sockets: list[socket.socket] | None = None,
    on_loaded: Callable[[Registry], Awaitable[None]] | None = None,
    make_control: Callable[[Registry], ModelControl] | None = None,
    replace_when_hung: bool = False,
    on_started: Callable[[], None] | None = None,
) -> tuple[bool, str | None]:
    """Serve until shutdown. Returns (started, failure line); the line is None after a clean run,
    names the model, source and cause when a model failed to load, and says so when the app's
    lifespan raised at its shutdown. ``on_started``: called once the app started, its own
    lifespan included, and the socket listens. ``replace_when_hung``:
    a worker under the supervisor stops (draining what it accepted) when a model's call
    hangs, and the supervisor starts a fresh one in its place."""
    # A model's library that crashes in native code (a damaged CatBoost file: SIGSEGV) ends
    # the process with no Python exception to report: Python's own fault handler then says
    # which signal and which Python frames (the runtime's load, the model's loader) on stderr.
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)
    options = config.server
    map_large_blocks(options.malloc_mmap_threshold)
    registry = Registry(
        config.models,
        unloaded=config.unloaded,
        artifact_roots=config.server.artifact_roots,
        max_artifact_bytes=config.server.max_artifact_bytes or None,
        declared=config.declared or (),
    )
    control = None if make_control is None else make_control(registry)
    # Now, not when uvicorn does (the same config): building a user's app logs what it keeps.
    logging.config.dictConfig(log_config(options.log_level, options.log_format))
    if config.app is None:
        app = create_app(
            registry,
            on_loaded=on_loaded,
            access=options.access(),
            limits=options.limits(),
            gc_freeze=options.gc_freeze,
            drain_timeout_s=options.drain_timeout_s,
            allowed_hosts=options.allowed_hosts,
            cors_allow_origins=options.cors_allow_origins,
            control=control,
            load_gate=lambda: _gated_with_progress(registry),
            tracing=config.tracing,
        )
    else:
        app = serve_user_app(
            load_app(config.app, factory=config.app_factory),
            registry=registry,
            options=options,
            on_loaded=on_loaded,
            load_gate=lambda: _gated_with_progress(registry),
            control=control,
            tracing=config.tracing,
        )
    served = lifespan_of(app)
    if served is not None:
        # The process exits once the app stopped: nothing to free for what comes after.
        served.serve_with(collect_at_stop=False)
    stop_grpc = None if options.grpc_port is None else _serve_grpc_too(app, options)
    quiet = _OneLineStartupFailure(app, registry)
    uvicorn_config = uvicorn.Config(
        quiet,
        host=options.host,
        port=options.port,
        log_config=log_config(options.log_level, options.log_format),
        # loadonce's request log replaces uvicorn's: the same line, with the request's id.
        access_log=False,
        log_level=options.log_level,
        lifespan="on",
        workers=options.workers,
        # uvicorn annotates an int, and hands it to asyncio.wait_for, which takes fractions.
        timeout_graceful_shutdown=options.drain_timeout_s,  # type: ignore[arg-type]
        http=guarded_protocol(
            header_timeout_s=options.header_timeout_s,
            body_timeout_s=options.body_timeout_s,
            max_header_bytes=options.max_header_bytes,
            max_header_fields=options.max_header_fields,
        ),
        ws=guarded_websocket_protocol(body_timeout_s=options.body_timeout_s),
        limit_concurrency=options.max_connections,
    )
    server = _DrainingServer(uvicorn_config, registry, options.stop_delay_s)
    if stop_grpc is not None:
        server.also_stop.append(stop_grpc)
    if on_started is not None:
        server.on_started.append(on_started)
    if replace_when_hung:

        def stop_to_be_replaced(model: Model) -> None:
            logger.error(
                "worker pid %d stops to be replaced: model '%s' has a hung call",
                os.getpid(),
                model.name,
            )
            registry.start_draining()
            server.stop_listening()

        registry.on_hung(stop_to_be_replaced)
    # uvicorn raises SystemExit when the lifespan fails; the failure line below says why.
    with contextlib.suppress(SystemExit):
        server.run(sockets=sockets)
    if server.started:
        return True, "the app's shutdown failed" if server.shutdown_failed else None
    if registry.failure is not None:
        return False, str(registry.failure)
    if quiet.app_failure is not None:
        return False, quiet.app_failure
    return False, f"worker pid {os.getpid()} failed to start (see the log above)"


def _serve_grpc_too(app: Any, options: ServerOptions) -> Callable[[], None]:
    """gRPC in this worker, on the port every worker binds (SO_REUSEPORT), from after the
    models loaded (and every worker reported loaded) until shutdown: around the app's own
    lifespan, inside loadonce's. Returns what stops it accepting calls (from any thread)."""
    from loadonce.protocols.grpc import GrpcServer, grpc_lifespan  # the grpc extra: when used

    found = lifespan_of(app)
    assert found is not None
    assert options.grpc_port is not None
    running: list[GrpcServer] = []
    found.serve_with(
        wrap=grpc_lifespan(
            host=options.host,
            port=options.grpc_port,
            reuse_port=True,
            grace_s=options.drain_timeout_s,
            # The bound HTTP has on open connections, for calls in flight.
            max_concurrent_rpcs=options.max_connections,
            # And on open connections, and the time to start one, as HTTP has.
            max_connections=options.max_connections,
            handshake_timeout_s=options.header_timeout_s,
            message_timeout_s=options.body_timeout_s,
            inner=found.settings.wrap,
            started=running.append,
        )
    )

    def stop_accepting() -> None:
        for server in running:
            server.stop_soon(options.drain_timeout_s)

    return stop_accepting


@asynccontextmanager
async def _gated_with_progress(registry: Registry) -> AsyncIterator[None]:
    """Wait for this worker's turn to load, then show progress while it loads."""
    async with one_worker_at_a_time(), load_progress(registry):
        yield


def serve_single_worker(config: ServeConfig) -> int:
    """``--workers 1``: serve in this process, on a socket bound first and listened on only
    after every model loaded."""
    try:
        sock = bind_without_listening(config.server.host, config.server.port)
        if config.server.grpc_port is not None:
            check_grpc_port(config.server.host, config.server.grpc_port)
    except BindError as exc:
        logging.config.dictConfig(log_config(config.server.log_level, config.server.log_format))
        logger.error("startup failed: %s", exc)
        return STARTUP_FAILED

    startup_bound = _StartupBound(config.server.startup_timeout_s)

    def announce() -> None:
        # Once the app's own lifespan ran too: it was said before, and that lifespan could
        # still take long, or fail.
        startup_bound.started()
        warn_if_open_to_the_network(sock, config.server.access(), config.server.allowed_hosts)
        logger.info("all models loaded; accepting connections on %s", describe_address(sock))

    # Until uvicorn takes the signals (its serve(), before the lifespan loads the models), a
    # stop signal is an early stop (server/early_stop.py: building the app took a SIGTERM
    # without a word, and served on). uvicorn re-raises a stop signal once it has drained, to
    # reach the handler that was in place before it: by then the early handlers do nothing
    # (hand_over), a clean exit (status 0) instead of a KeyboardInterrupt traceback or death
    # by SIGTERM.
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    stop_early_on_signals()
    try:
        with sock:
            started, failure = run_worker(
                config, sockets=[sock], on_loaded=startup_bound.loaded, on_started=announce
            )
    finally:
        startup_bound.started()
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if started:
        # uvicorn logged a failed shutdown (the app's lifespan raised); the status says it.
        return 0 if failure is None else SHUTDOWN_FAILED
    logger.error("startup failed: %s", failure)
    return STARTUP_FAILED


class _StartupBound:
    """``startup_timeout_s`` for the single worker, as the supervisor applies it to each of
    several: from the models loaded until it serves (the app's own lifespan, gRPC's
    listener). A lifespan that never finished hung the server for good, never serving. Timed
    on a thread of its own: that lifespan may block the event loop (a synchronous migration)."""

    def __init__(self, limit_s: float) -> None:
        self._limit_s = limit_s
        self._serving = threading.Event()

    async def loaded(self, registry: Registry) -> None:
        threading.Thread(target=self._watch, name="loadonce-startup-bound", daemon=True).start()

    def started(self) -> None:
        self._serving.set()

    def _watch(self) -> None:
        if not self._serving.wait(self._limit_s):
            logger.error("startup failed: %s", did_not_start_in_time(os.getpid(), self._limit_s))
            exit_leaving_threads(STARTUP_FAILED)


def worker_process_main(config: ServeConfig, sock: socket.socket, gate: Connection) -> None:
    """Entry point of a worker started by the supervisor (server/worker_start.py).

    After loading, the worker reports to the supervisor and waits for GO before it listens, so
    no worker accepts a connection until every worker has loaded every model.
    """

    controls: list[SupervisedControl] = []

    def make_control(registry: Registry) -> SupervisedControl:
        controls.append(SupervisedControl(gate, registry))
        return controls[0]

    async def wait_for_go(registry: Registry) -> None:
        gate.send(("loaded", os.getpid()))
        try:
            reply = await anyio.to_thread.run_sync(gate.recv)
        except EOFError:
            reply = STOP  # the supervisor is gone: never serve unsupervised
        if reply != GO:
            raise registry.refuse_to_serve("stopped before serving: another worker failed")
        # From now on the pipe carries model control (load, unload, reload) both ways.
        controls[0].start(asyncio.get_running_loop())

    serving = threading.Event()

    def started_serving() -> None:
        serving.set()
        controls[0].announce_started()

    def after_drain(signum: int, frame: FrameType | None) -> None:
        # uvicorn raises the stop signal again once it drained and shut down, to reach this
        # handler: the worker then exits with its own status (a failed shutdown's). Before it
        # serves, a stop signal ends the worker by the signal's own action, at once, as the
        # supervisor expects (worker_process.worker_main). Handed to the handler in place
        # before (the early stop's, which raises StoppedEarly), a signal arriving while the
        # event loop wound down raised inside whatever callback it ran: a traceback in the
        # log, 1 start in 12 when another worker's startup failed.
        if not serving.is_set():
            logging.shutdown()
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, after_drain)
    started, failure = run_worker(
        config,
        sockets=[sock],
        on_loaded=wait_for_go,
        make_control=make_control,
        replace_when_hung=True,
        on_started=started_serving,
    )
    if not started:
        with contextlib.suppress(OSError):  # a supervisor that is gone needs no report
            gate.send((FAILED, failure))
        exit_leaving_threads(STARTUP_FAILED)
    # uvicorn logged the app's traceback; the status tells the supervisor (which says which
    # worker, and exits 1). Without waiting for threads: a load abandoned at its timeout may
    # still run in one.
    exit_leaving_threads(0 if failure is None else SHUTDOWN_FAILED)
