"""A ``grpc.aio`` server of the protocol's gRPC service over one app's state: started once
the models are loaded, stopped (drained) before they unload."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc

from loadonce.core.errors import LoadonceError
from loadonce.http.lifespan import UserLifespan
from loadonce.http.state import LoadonceState
from loadonce.protocols.grpc.service import InferenceService

logger = logging.getLogger("loadonce")

# gRPC's own default cap on a received message (4 MiB) when no body limit is set is far below
# what tensors need; without a limit, gRPC's largest (2 GiB - 1).
_UNLIMITED = 2**31 - 1
# A connection with no call in flight for this long is closed (GOAWAY: a client's channel
# reconnects on its next call). Without it, and without a bound on connections, a client
# that opened connections and sent nothing held every one for good: 20,000 of them used up
# the worker's file descriptors, and its HTTP port stopped answering, health probes included.
IDLE_CONNECTION_S = 60.0
# The fewest calls one connection may have open at once (see ``start``).
STREAMS_PER_CONNECTION = 1000


class GrpcBindError(LoadonceError):
    """The gRPC port could not be bound (startup fails with this line)."""


class GrpcServer:
    """``host``/``port``: where to listen (port 0: any free one; ``port`` says which once
    started). ``reuse_port``: every worker of a server binds the same port
    (``SO_REUSEPORT``), and the kernel spreads connections over them. Messages are limited
    to the state's ``limits.max_body_bytes`` (RESOURCE_EXHAUSTED beyond). ``max_connections``:
    open connections past it are closed at once (as HTTP's ``max_connections``); one must
    send its HTTP/2 preface within ``handshake_timeout_s`` (as HTTP's ``header_timeout_s``),
    and one with no call in flight is closed after ``IDLE_CONNECTION_S``; a call's request
    message must arrive within ``message_timeout_s`` (DEADLINE_EXCEEDED beyond)."""

    def __init__(
        self,
        state: LoadonceState,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        reuse_port: bool = False,
        model_control: bool = True,
        max_concurrent_rpcs: int | None = 1000,
        max_connections: int | None = 1000,
        handshake_timeout_s: float = 10.0,
        message_timeout_s: float | None = 30.0,
    ) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.model_control = model_control
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self.max_connections = max_connections
        self.handshake_timeout_s = handshake_timeout_s
        self.message_timeout_s = message_timeout_s
        self._server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._service: InferenceService | None = None

    async def start(self) -> None:
        limit = self.state.limits.max_body_bytes or _UNLIMITED
        # HTTP/2's MAX_CONCURRENT_STREAMS, which gRPC left unbounded: a connection that opened
        # 20,000 calls and reset each at once (HTTP/2's "rapid reset") queued them all in
        # gRPC's core faster than the loop could take them, and every other client's call was
        # CANCELLED for seconds. With a bound, gRPC counts a reset call until it is done and
        # refuses the rest of such a burst (ENHANCE_YOUR_CALM). Never below the bound on
        # calls in flight, which stays the one a client meets (RESOURCE_EXHAUSTED).
        streams = max(self.max_concurrent_rpcs or 0, STREAMS_PER_CONNECTION)
        connections = []
        if self.max_connections is not None:
            connections.append(("grpc.max_allowed_incoming_connections", self.max_connections))
        server = grpc.aio.server(
            # Backpressure before the models' queues: a call the loop has yet to hand to a
            # model is not counted by max_queue, and under overload such calls piled up
            # without bound. Past this many in flight, RESOURCE_EXHAUSTED at once (HTTP's
            # max_connections does the same for connections).
            maximum_concurrent_rpcs=self.max_concurrent_rpcs,
            options=[
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
                ("grpc.max_receive_message_length", min(limit, _UNLIMITED)),
                ("grpc.max_send_message_length", _UNLIMITED),
                ("grpc.server_handshake_timeout_ms", _milliseconds(self.handshake_timeout_s)),
                ("grpc.max_connection_idle_ms", _milliseconds(IDLE_CONNECTION_S)),
                ("grpc.max_concurrent_streams", streams),
                *connections,
            ],
        )
        service = InferenceService(
            self.state,
            model_control=self.model_control,
            message_timeout_s=self.message_timeout_s,
            # An eighth of the calls in flight: the rest stay for the calls that infer.
            max_watches=max(1, (self.max_concurrent_rpcs or 1024) // 8),
        )
        server.add_generic_rpc_handlers(service.handlers())
        self._service = service
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise GrpcBindError(f"cannot bind the gRPC port {address}: {exc}") from None
        if bound == 0:  # older grpcio reports a failed bind this way
            raise GrpcBindError(f"cannot bind the gRPC port {address}")
        self.port = bound
        await server.start()
        self._server = server
        self._loop = asyncio.get_running_loop()
        logger.info("gRPC (Open Inference Protocol) listening on %s:%d", self.host, bound)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting calls; those in flight get ``grace_s`` to finish (None: all the
        time they need), then are cancelled. After ``stop_soon``, waits for that stop."""
        self._begin_stop(grace_s)
        if self._stopping is not None:
            await self._stopping

    def stop_soon(self, grace_s: float | None = None) -> None:
        """``stop`` begun from any thread (a signal handler, a timer), without waiting: a
        worker stops accepting gRPC calls when it stops accepting HTTP connections, long
        before its lifespan ends (that waits for the HTTP requests in flight)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._begin_stop, grace_s)

    def _begin_stop(self, grace_s: float | None) -> None:
        server, self._server = self._server, None
        if self._service is not None:
            # Streams waiting for a request, and health Watch streams, end now: they would
            # hold the grace period to its end.
            self._service.stop_streams()
        if server is not None:
            self._stopping = asyncio.ensure_future(server.stop(grace_s))


def _milliseconds(seconds: float) -> int:
    return max(1, min(round(seconds * 1000), _UNLIMITED))


def grpc_lifespan(
    *,
    host: str = "127.0.0.1",
    port: int,
    reuse_port: bool = False,
    model_control: bool = True,
    grace_s: float | None = 30.0,
    max_concurrent_rpcs: int | None = 1000,
    max_connections: int | None = 1000,
    handshake_timeout_s: float = 10.0,
    message_timeout_s: float | None = 30.0,
    inner: UserLifespan | None = None,
    started: Callable[[GrpcServer], None] | None = None,
) -> UserLifespan:
    """A lifespan to pass as ``lifespan(..., wrap=...)`` (or ``create_app(wrap=...)``): it
    serves gRPC while the app runs, from after every model loaded (and ``inner``, the app's
    own lifespan, started) until shutdown, which stops accepting calls and gives those in
    flight ``grace_s`` before the models unload; past ``max_concurrent_rpcs`` calls in flight,
    RESOURCE_EXHAUSTED; ``max_connections``, ``handshake_timeout_s`` and
    ``message_timeout_s``: as ``GrpcServer``'s.
    ``started``: called with the server once it
    listens, for whoever stops it sooner (``GrpcServer.stop_soon``)."""

    @asynccontextmanager
    async def serve_grpc(app: Any) -> AsyncIterator[Mapping[str, Any] | None]:
        async with AsyncExitStack() as stack:
            user_state = None if inner is None else await stack.enter_async_context(inner(app))
            state = LoadonceState.on(app)
            if state is None:
                raise LoadonceError("grpc_lifespan needs loadonce's lifespan on the app")
            server = GrpcServer(
                state,
                host=host,
                port=port,
                reuse_port=reuse_port,
                model_control=model_control,
                max_concurrent_rpcs=max_concurrent_rpcs,
                max_connections=max_connections,
                handshake_timeout_s=handshake_timeout_s,
                message_timeout_s=message_timeout_s,
            )
            await server.start()
            if started is not None:
                started(server)
            try:
                yield user_state
            finally:
                await server.stop(grace_s)

    return serve_grpc
