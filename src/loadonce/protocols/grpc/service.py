"""The Open Inference Protocol's gRPC service (``inference.GRPCInferenceService``) and gRPC's
health service, over one app's ``LoadonceState``: the same registry, queues, deadlines, API
keys, metrics and error mapping as the REST routes.

Each RPC runs through ``_call``: the request id (metadata ``x-request-id`` if short and
plain, else a new one; sent back in the trailing metadata), the API key (metadata
``authorization: Bearer KEY`` or ``x-api-key``, by the REST routes' families), the error
mapping (``http/errors.py``'s one mapping, its HTTP status turned into a gRPC code) and the
request's line in the metrics (route: the RPC's path).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio.to_thread
import grpc
from google.protobuf.message import DecodeError

from loadonce._version import __version__
from loadonce.core.body_budget import HeldBody
from loadonce.core.control import Action
from loadonce.core.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    LoadonceError,
    ModelNotReadyError,
)
from loadonce.core.log_safe import log_safe, quoted
from loadonce.core.model import Model
from loadonce.core.tracebacks import release_tracebacks
from loadonce.http.access_keys import (
    SEND_KEY_AS_METADATA,
    RouteFamily,
    presented_key,
    refusal,
)
from loadonce.http.errors import NEVER_RETRY, describe_error, retry_advice, v2_status
from loadonce.http.json_pieces import ON_THE_LOOP_ELEMENTS
from loadonce.http.large_bodies import off_the_loop
from loadonce.http.request_info import request_id_from
from loadonce.http.request_line import access_logger, write_request_line
from loadonce.http.routes import count_request
from loadonce.http.state import LoadonceState
from loadonce.protocols.grpc.messages import (
    HEALTH_SERVICE,
    SERVICE,
    HealthCheckResponse,
    fill_from_json,
    method_types,
    plain_parameters,
)
from loadonce.protocols.grpc.stream import MessageTimeoutError, StreamCall, answer_stream
from loadonce.protocols.grpc.tensors import (
    decode_grpc_inputs,
    encode_grpc_outputs,
    inputs_described,
    parsed_infer_bytes,
)
from loadonce.protocols.v2.classification import EXTENSION as CLASSIFICATION
from loadonce.protocols.v2.config_load import BatchingChange
from loadonce.protocols.v2.described import described_inputs, described_outputs
from loadonce.protocols.v2.errors import find_model, model_to_load
from loadonce.protocols.v2.examples import check_before_decoding
from loadonce.protocols.v2.infer import Prediction, predict
from loadonce.protocols.v2.model_config import model_config
from loadonce.protocols.v2.repository import (
    apply_control,
    check_unload_parameters,
    index_entry,
    load_batching,
)
from loadonce.protocols.v2.schemas import RequestOutput
from loadonce.protocols.v2.statistics import EXTENSION as STATISTICS
from loadonce.protocols.v2.statistics import read_statistics
from loadonce.protocols.v2.tensors import declared_elements
from loadonce.protocols.v2.unsupported import UNSUPPORTED, NotSupportedError
from loadonce.tracing import phase

REQUEST_ID_KEY = "x-request-id"
SERVER_NAME = "loadonce"
# HTTP's statuses (loadonce's errors carry one) as gRPC's codes. A client's mistake is never
# INTERNAL: any other 4xx is INVALID_ARGUMENT.
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# The HTTP status an RPC's own abort stands for, in the access line and the metrics.
# A ModelInfer message past this many bytes has what its parse made counted too (below it,
# what a parse adds is a few megabytes at most).
_PARSED_COUNTED_FROM = 64 * 1024
_STATUS_OF = {code: status for status, code in _CODES.items() if status not in (429, 408)}
# Which REST family each RPC is in, for API keys (``http/access_keys.py``).
_FAMILIES = {
    "ServerLive": RouteFamily.OPEN,
    "ServerReady": RouteFamily.OPEN,
    "RepositoryModelLoad": RouteFamily.ADMIN,
    "RepositoryModelUnload": RouteFamily.ADMIN,
    "ModelStatistics": RouteFamily.STATISTICS,
}
_SERVING = 1
_NOT_SERVING = 2
_SERVICE_UNKNOWN = 3
# How often a health Watch stream looks at the worker's readiness (nothing signals a change):
# a change reaches its client within this time.
WATCH_EVERY_S = 0.25

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
Call = Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext], Awaitable[Any]]


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status."""
    code = _CODES.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


# gRPC's own word on retrying (gRFC A6), which its clients' retry policies obey: the
# milliseconds to wait before the next attempt, or a negative number: do not retry. Their
# policies retry UNAVAILABLE, which a model unloaded by an operator is too.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


def retry_pushback(exc: Exception, status: int) -> tuple[tuple[str, str], ...]:
    """``retry_advice`` as gRPC says it, in the trailer: the milliseconds to wait, or -1
    (never); nothing where the answer says nothing."""
    advice = retry_advice(exc, status)
    if advice is None:
        return ()
    return ((RETRY_PUSHBACK_KEY, "-1" if advice == NEVER_RETRY else str(advice * 1000)),)


class InferenceService:
    """The RPCs, each ``async (request, context) -> response``; ``handlers()`` registers them
    with a ``grpc.aio`` server. ``model_control``: whether load and unload act (as
    ``v2_router``'s). ``message_timeout_s``: how long a call's request message may take to
    arrive once the call began (None: as long as it takes)."""

    def __init__(
        self,
        state: LoadonceState,
        *,
        model_control: bool = True,
        message_timeout_s: float | None = 30.0,
        max_watches: int = 128,
    ) -> None:
        self.state = state
        self.model_control = model_control
        self.message_timeout_s = message_timeout_s
        # Health Watch streams open at once, at most: they need no key and last as long as
        # the client likes, and each holds one of the server's max_concurrent_rpcs, so
        # unbounded they could take every slot from the calls that infer.
        self.max_watches = max_watches
        self._watching = 0
        # Set when the server begins to stop: a stream waiting for its next request ends,
        # and every health Watch stream ends (its last status NOT_SERVING), instead of holding
        # the stop's grace period to its end.
        self.stopping = asyncio.Event()

    def stop_streams(self) -> None:
        """End every stream that waits: ModelStreamInfer's and health Watch's (the server is
        stopping)."""
        self.stopping.set()

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        rpcs: dict[str, Handler] = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ModelReady": self.model_ready,
            "ServerMetadata": self.server_metadata,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
            "ModelConfig": self.model_config,
            "ModelStatistics": self.model_statistics,
            "RepositoryIndex": self.repository_index,
            "RepositoryModelLoad": self.repository_load,
            "RepositoryModelUnload": self.repository_unload,
        }
        inference = {
            name: _unary(_TYPES[name][1], self._call(name, rpc)) for name, rpc in rpcs.items()
        }
        stream = self._call(_STREAM, self.model_stream_infer, reads_message=False)
        inference[_STREAM] = grpc.stream_stream_rpc_method_handler(
            stream, response_serializer=_TYPES[_STREAM][1].SerializeToString
        )
        # The service's other RPCs, which tritonclient calls: UNIMPLEMENTED with what is not
        # offered (grpcio's own answer, "Method not found!", named nothing). Their messages
        # are not read: nothing in them matters.
        for feature in UNSUPPORTED:
            for name in feature.rpcs:
                refuse = self._call(name, _refusal(feature.message), reads_message=False)
                inference[name] = grpc.stream_unary_rpc_method_handler(refuse)
        check_types = method_types(HEALTH_SERVICE)["Check"]
        # Open as the HTTP probes are, and logged and counted as they are.
        check = self._call(
            "Check",
            self.health_check,
            service=HEALTH_SERVICE,
            request_class=check_types[0],
            family=RouteFamily.OPEN,
        )
        health = {"Check": _unary(check_types[1], check), "Watch": self._watch_handler()}
        return [
            grpc.method_handlers_generic_handler(SERVICE, inference),
            grpc.method_handlers_generic_handler(HEALTH_SERVICE, health),
        ]

    def _call(
        self,
        method: str,
        rpc: Handler,
        *,
        service: str = SERVICE,
        request_class: Any = None,
        family: RouteFamily | None = None,
        reads_message: bool = True,
    ) -> Call:
        """``reads_message``: whether the RPC is given its request message (else a
        ``StreamCall``: the raw messages, which it reads itself)."""
        family = family or _FAMILIES.get(method, RouteFamily.INFERENCE)
        route = f"/{service}/{method}"
        state = self.state
        if reads_message:
            request_class = request_class or _TYPES[method][0]
        message_timeout_s = self.message_timeout_s

        async def call(messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            request: Any = None
            metadata = _raw_metadata(context)
            request_id = request_id_from(metadata)
            trailer = ((REQUEST_ID_KEY, request_id),)
            status = 200
            traced = None
            held = HeldBody(state.body_budget)
            try:
                if state.access is not None:
                    refused = refusal(
                        state.access, family, presented_key(metadata), how=SEND_KEY_AS_METADATA
                    )
                    if refused is not None:
                        status, message = refused
                        await context.abort(grpc_code(status), message, trailer)
                # After the key: a refused caller's traceparent is never read (as HTTP's).
                if state.tracing is not None:  # the caller's traceparent is in the metadata
                    traced = state.tracing.start_request(f"{service}/{method}", metadata)
                    if traced is not None:
                        traced.describe(
                            {
                                "rpc.system": "grpc",
                                "rpc.service": service,
                                "rpc.method": method,
                                "loadonce.request_id": request_id,
                            }
                        )
                        traced.enter()
                try:
                    # After the key: a refused caller's message is never waited for.
                    if not reads_message:
                        request = StreamCall(messages, request_id)
                    else:
                        raw = await _one_message(messages, message_timeout_s)
                        # Held in the worker's budget of body bytes until the call ends, as
                        # an HTTP body is (core/body_budget.py): gRPC's own limit is per
                        # message.
                        held.take(len(raw))
                        request = _parsed(request_class, raw)
                        if len(raw) > _PARSED_COUNTED_FROM and method == "ModelInfer":
                            # What its parse made of it, before any of it is decoded (one
                            # parse at a time: the event loop's).
                            held.take(parsed_infer_bytes(request))
                    response = await rpc(request, context)
                except asyncio.CancelledError:
                    status = 499
                    raise
                except grpc.aio.AbortError:
                    # The RPC's own answer (the health check's NOT_FOUND): neither a failure
                    # of the server's nor to be aborted twice.
                    status = _STATUS_OF.get(context.code(), 500)
                    raise
                except Exception as exc:
                    status, message = describe_error(exc, route, request_id)
                    status = v2_status(exc, status)  # REST's /v2 status: 400, not 422
                    if traced is not None:
                        traced.failed(exc, status)
                    release_tracebacks(exc)  # logged and recorded (core/tracebacks.py)
                    advice = retry_pushback(exc, status)
                    await context.abort(grpc_code(status), _bounded(message), trailer + advice)
                context.set_trailing_metadata(trailer)
                return response
            finally:
                held.release()
                name = getattr(request, "model_name", None) or getattr(request, "name", None)
                seconds = time.perf_counter() - started
                count_request(state, {"model_name": name}, route, status, seconds)
                if access_logger.isEnabledFor(logging.INFO):
                    # A line per call, as each HTTP request has (none was written): the
                    # HTTP/2 request gRPC is, its path the RPC's, its status HTTP's.
                    write_request_line("POST", route, status, seconds * 1000, request_id)
                if traced is not None:  # after the access line, which carries its ids
                    traced.finish()

        return call

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _reply("ServerLive", live=True)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _reply("ServerReady", ready=self.state.registry.is_ready)

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # A model or version not served is not ready, as Triton answers it (OK, ready false:
        # tritonclient's is_model_ready() returns False, where NOT_FOUND made it raise); REST
        # says so with its 404, a status other than 200 as the protocol's "false".
        registry = self.state.registry
        if request.name not in registry:
            return _reply("ModelReady", ready=False)
        model = registry.get(request.name)
        served = request.version in ("", model.version)
        return _reply("ModelReady", ready=served and model.is_ready)

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        extensions = [CLASSIFICATION, "parameters"]
        if self.model_control:
            extensions.append("model_repository")
        if self.state.metrics is not None:
            extensions.append(STATISTICS)  # read from the metrics: none without them
        return _reply(
            "ServerMetadata", name=SERVER_NAME, version=__version__, extensions=extensions
        )

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self._serving_model(request.name, request.version)
        response = _reply(
            "ModelMetadata",
            name=model.name,
            versions=[model.version],
            platform=model.runtime_name or "",
        )
        for target, tensors in (
            (response.inputs, described_inputs(model)),
            (response.outputs, described_outputs(model)),
        ):
            for tensor in tensors:
                target.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        return response

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        arrived = asyncio.get_running_loop().time()
        model = self._serving_model(request.model_name, request.model_version)
        model.refuse_if_full()
        limits = self.state.limits
        with phase("decode tensors"):
            described = inputs_described(request)
            check_before_decoding(model, described)
            decode = functools.partial(
                decode_grpc_inputs, request, max_element_bytes=limits.max_element_bytes
            )
            # Many elements: off the loop, as the REST route decodes them.
            if declared_elements(described) <= ON_THE_LOOP_ELEMENTS:
                arrays, datatypes = decode()
            else:
                arrays, datatypes = await off_the_loop(decode)
        requested = [
            RequestOutput(
                name=output.name,
                parameters=plain_parameters(
                    output.parameters, f"outputs['{output.name}'].parameters"
                ),
            )
            for output in request.outputs
        ]
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # The client's deadline ran out before the call was read: its own limit, not a
            # bad timeout (which INVALID_ARGUMENT would tell it never to retry).
            raise DeadlineExceededError(model.name)

        async def respond(prediction: Prediction) -> Any:
            response = _reply("ModelInfer", model_name=model.name, model_version=prediction.version)
            if request.id:
                response.id = request.id
            raw = bool(request.raw_input_contents)
            with phase("encode"):
                if prediction.values() <= ON_THE_LOOP_ELEMENTS:
                    encode_grpc_outputs(response, prediction.tensors, raw=raw)
                else:  # millions of values held the loop for seconds: in a thread, in pieces
                    await anyio.to_thread.run_sync(
                        functools.partial(
                            encode_grpc_outputs, response, prediction.tensors, raw=raw
                        )
                    )
            return response

        return await predict(
            model,
            arrays,
            datatypes,
            plain_parameters(request.parameters),
            requested or None,
            respond,
            timeout_s=remaining,
            arrived=arrived,
        )

    async def model_stream_infer(self, call: StreamCall, context: grpc.aio.ServicerContext) -> None:
        await answer_stream(
            call,
            context,
            self.model_infer,
            route=f"/{SERVICE}/{_STREAM}",
            budget=self.state.body_budget,
            first_message_timeout_s=self.message_timeout_s,
            stopping=self.stopping,
        )

    async def model_config(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self._serving_model(request.name, request.version)
        response = _reply("ModelConfig")
        fill_from_json(response.config, model_config(model))
        return response

    async def model_statistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # An empty name asks for every model, as in Triton.
        found = await read_statistics(self.state, request.name or None, request.version or None)
        return fill_from_json(_reply("ModelStatistics"), found.model_dump())

    async def repository_index(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        response = _reply("RepositoryIndex")
        for model in self.state.registry.models:
            if model.is_ready or not request.ready:
                entry = index_entry(model)
                response.models.add(
                    name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
                )
        return response

    async def repository_load(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = model_to_load(self.state.registry, request.model_name)
        self._control_on()
        batching = load_batching(model, plain_parameters(request.parameters))
        await self._apply(model.name, "load", batching)
        return _reply("RepositoryModelLoad")

    async def repository_unload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = find_model(self.state.registry, request.model_name)
        check_unload_parameters(plain_parameters(request.parameters), under="parameters")
        self._control_on()
        await self._apply(model.name, "unload", None)
        return _reply("RepositoryModelUnload")

    async def health_check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """SERVING when every model of this worker is ready (and it is not stopping), for the
        whole server (service "") and for the inference service by name."""
        if request.service not in ("", SERVICE):
            # As gRPC's health protocol says: NOT_FOUND for a service it does not know
            # (SERVICE_UNKNOWN is Watch's answer, never Check's).
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown service {quoted(request.service)}"
            )
        return HealthCheckResponse(status=self._health_status())

    def _health_status(self) -> int:
        registry = self.state.registry
        serving = registry.is_ready and not registry.draining and not self.stopping.is_set()
        return _SERVING if serving else _NOT_SERVING

    def _watch_handler(self) -> grpc.RpcMethodHandler:
        """gRPC's health ``Watch`` (what gRPC clients' own health checking calls): the status
        ``Check`` would answer, then each change of it, as it happens (looked at every
        ``WATCH_EVERY_S``); a service it does not know is SERVICE_UNKNOWN, the stream kept
        open, as the protocol says. Every stream ends when the server begins to stop, its
        last status NOT_SERVING. Open as ``Check`` is; one access line when it ends."""
        route = f"/{HEALTH_SERVICE}/Watch"
        request_class = method_types(HEALTH_SERVICE)["Watch"][0]
        state = self.state

        async def watch(
            messages: AsyncIterator[bytes], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            metadata = _raw_metadata(context)
            request_id = request_id_from(metadata)
            trailer = ((REQUEST_ID_KEY, request_id),)
            status = 200
            try:
                if self._watching >= self.max_watches:
                    status = 429
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"at most {self.max_watches} health Watch streams are served at once; "
                        "use Check, or close a Watch",
                        trailer,
                    )
                self._watching += 1
                try:
                    try:
                        raw = await _one_message(messages, self.message_timeout_s)
                        request = _parsed(request_class, raw)
                    except LoadonceError as exc:
                        status = exc.status
                        message = _bounded(exc.client_message())
                        await context.abort(grpc_code(status), message, trailer)
                    async for serving in self._statuses(request.service):
                        yield HealthCheckResponse(status=serving)
                    context.set_trailing_metadata(trailer)
                finally:
                    self._watching -= 1
            except asyncio.CancelledError:
                status = 499  # the client left, or the server's stop ran out of time
                raise
            finally:
                seconds = time.perf_counter() - started
                count_request(state, {"model_name": None}, route, status, seconds)
                if access_logger.isEnabledFor(logging.INFO):
                    write_request_line("POST", route, status, seconds * 1000, request_id)

        return grpc.stream_stream_rpc_method_handler(
            watch, response_serializer=HealthCheckResponse.SerializeToString
        )

    async def _statuses(self, service: str) -> AsyncIterator[int]:
        """The statuses a Watch of ``service`` sends, until the server begins to stop."""
        if service not in ("", SERVICE):
            yield _SERVICE_UNKNOWN
            await self.stopping.wait()
            return
        last = None
        while True:
            current = self._health_status()
            if current != last:
                yield current
                last = current
            if self.stopping.is_set():
                return  # NOT_SERVING was just sent, or before
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(WATCH_EVERY_S):
                    await self.stopping.wait()

    def _serving_model(self, name: str, version: str) -> Model:
        model = find_model(self.state.registry, name, version or None)
        if not model.is_serving:
            raise ModelNotReadyError(model.name, model.state.value)
        return model

    def _control_on(self) -> None:
        if not self.model_control:
            raise ControlRefusedError("model control is off in this server")

    async def _apply(self, name: str, action: Action, batching: BatchingChange | None) -> None:
        failed = await apply_control(self.state, name, action, batching)
        if failed:
            raise ControlRefusedError(failed)


class ControlRefusedError(LoadonceError):
    """A load or unload that model control refused or that failed (INVALID_ARGUMENT, as
    REST's 400)."""

    status = 400


_TYPES = method_types(SERVICE)
# The service's streaming RPC (bidirectional: protocols/grpc/stream.py).
_STREAM = "ModelStreamInfer"


def _raw_metadata(context: grpc.aio.ServicerContext) -> list[tuple[bytes, bytes]]:
    """The call's metadata as an HTTP request's headers are kept (bytes names and values: a
    ``-bin`` value is bytes already), for what reads both alike (the request id, the keys)."""
    return [
        (key.encode("latin-1"), value if isinstance(value, bytes) else value.encode())
        for key, value in context.invocation_metadata() or ()
    ]


def _refusal(message: str) -> Handler:
    """An RPC that refuses every call with ``message`` (UNIMPLEMENTED)."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise NotSupportedError(message)

    return refuse


def _reply(method: str, **fields: Any) -> Any:
    """A response message of the RPC ``method``."""
    return _TYPES[method][1](**fields)


def _unary(response_class: Any, handler: Call) -> grpc.RpcMethodHandler:
    # The request arrives as bytes and is parsed by the handler (``_parsed``): parsed by
    # grpcio, a message that is not one was answered UNKNOWN, with a Python class's name,
    # before the API key was even checked. And it is read by the handler (a unary call is a
    # client stream of one message on the wire): grpcio reads a unary call's message before
    # the handler starts, with no limit on the time it takes, and 1,100 calls that each sent
    # a few bytes of their message held every slot of max_concurrent_rpcs for good, one
    # connection refusing every other client's call (RESOURCE_EXHAUSTED).
    return grpc.stream_unary_rpc_method_handler(
        handler, response_serializer=response_class.SerializeToString
    )


async def _one_message(messages: AsyncIterator[bytes], timeout_s: float | None) -> bytes:
    """A unary call's one request message, once it arrived within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            return await anext(messages)
    except TimeoutError:
        raise MessageTimeoutError(
            f"the request message did not arrive within {timeout_s:g} s of the call"
        ) from None
    except StopAsyncIteration:
        raise InvalidRequestError([("message", "the call sent no request message")]) from None


def _parsed(request_class: Any, raw: bytes) -> Any:
    """The request message in ``raw``; INVALID_ARGUMENT when it is not one (truncated, a
    string field that is not UTF-8)."""
    try:
        return request_class.FromString(raw)
    except DecodeError:
        name = request_class.DESCRIPTOR.full_name
        raise InvalidRequestError([("message", f"not a valid {name} message")]) from None


# A status message travels in a trailer, which gRPC clients cap (8 KiB, percent-encoded):
# a message quoting a client's 20,000-character name answered RESOURCE_EXHAUSTED instead of
# its own code. 500 characters hold any message loadonce writes about a sane request.
_MOST_MESSAGE_CHARACTERS = 500


def _bounded(message: str) -> str:
    """``message`` as a status may carry it: made ``log_safe`` first, since a message quotes
    what the client sent (an input's name, a datatype) and a status's message is one line a
    client logs as it is (a newline in a name reached it raw: a forged line), then cut."""
    message = log_safe(message)
    if len(message) <= _MOST_MESSAGE_CHARACTERS:
        return message
    return message[: _MOST_MESSAGE_CHARACTERS - 1] + "\u2026"
