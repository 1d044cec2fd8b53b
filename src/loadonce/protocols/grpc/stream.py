"""``ModelStreamInfer``: the protocol's bidirectional stream of inference requests, as
tritonclient's ``start_stream`` / ``async_stream_infer`` and its aio ``stream_infer`` use it.

Each request of the stream is answered as ``ModelInfer`` answers it (same model lookup,
decoding, queue, deadline, error mapping), in order, one at a time. A request that fails is
answered with its error in ``error_message`` and the stream goes on, as in Triton; the stream
itself ends when its client closes it (or its deadline, its cancellation). With Triton's
``triton_enable_empty_final_response`` (tritonclient's ``enable_empty_final_response``) each
response carries ``triton_final_response`` true: every loadonce model answers a request with
one response, its last (Triton's non-decoupled models).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from loadonce.core.body_budget import BodyBudget, HeldBody
from loadonce.core.errors import InvalidRequestError, LoadonceError
from loadonce.core.tracebacks import release_tracebacks
from loadonce.http.errors import describe_error
from loadonce.protocols.grpc.messages import ModelInferRequest, message_class

ModelStreamInferResponse = message_class("inference.ModelStreamInferResponse")
# Triton's reserved parameters of a streamed request and of its response.
ENABLE_FINAL = "triton_enable_empty_final_response"
FINAL = "triton_final_response"


class MessageTimeoutError(LoadonceError):
    """A call's request message did not arrive in time (DEADLINE_EXCEEDED, as HTTP's 408)."""

    status = 408


@dataclass(frozen=True)
class StreamCall:
    """What a stream's RPC is given: its raw request messages and the call's request id
    (in the trailing metadata, and in the log line of each request that fails)."""

    messages: AsyncIterator[bytes]
    request_id: str


Infer = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


async def answer_stream(
    call: StreamCall,
    context: grpc.aio.ServicerContext,
    infer: Infer,
    *,
    route: str,
    budget: BodyBudget,
    first_message_timeout_s: float | None,
    stopping: asyncio.Event,
) -> None:
    """Answer each request of the stream with ``infer`` (``ModelInfer``'s work), in order.

    The first request must arrive within ``first_message_timeout_s`` (as a unary call's
    message must): a stream that sends nothing would hold its place among the calls in flight
    for good. Later ones may take their time, as a client's stream is meant to stay open,
    until ``stopping`` is set: the server stops, and a stream waiting for its next request
    ends then (it held the server's stop for its whole grace period)."""
    messages = call.messages
    first = True
    while True:
        try:
            async with asyncio.timeout(first_message_timeout_s if first else None):
                raw = await _next_unless(messages, stopping)
        except StopAsyncIteration:
            return  # the client closed its side, or the server stops: all was answered
        except TimeoutError:
            raise MessageTimeoutError(
                f"the stream sent no request within {first_message_timeout_s:g} s of the call"
            ) from None
        first = False
        held = HeldBody(budget)
        try:
            answer = await _answer(raw, held, context, infer, route, call.request_id)
        finally:
            held.release()
        await context.write(answer)


async def _next_unless(messages: AsyncIterator[bytes], stopping: asyncio.Event) -> bytes:
    """The stream's next message; StopAsyncIteration once ``stopping`` is set first."""
    if stopping.is_set():
        raise StopAsyncIteration
    reading = asyncio.ensure_future(anext(messages))
    stopped = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((reading, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not reading.done():
            reading.cancel()
    if not reading.done() or reading.cancelled():
        raise StopAsyncIteration
    return reading.result()


async def _answer(
    raw: bytes,
    held: HeldBody,
    context: grpc.aio.ServicerContext,
    infer: Infer,
    route: str,
    request_id: str,
) -> Any:
    """One request's response, or its error, as the stream's message (a request over the
    budget of bytes in flight too: the stream goes on)."""
    try:
        held.take(len(raw))  # as a unary call's message is, until it is answered
        request = _request(raw)
        final = _final_wanted(request)
        response = await infer(request, context)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _, message = describe_error(exc, route, request_id)
        release_tracebacks(exc)
        return ModelStreamInferResponse(error_message=message)
    if final:
        response.parameters[FINAL].bool_param = True
    return ModelStreamInferResponse(infer_response=response)


def _request(raw: bytes) -> Any:
    try:
        return ModelInferRequest.FromString(raw)
    except DecodeError:
        raise InvalidRequestError(
            [("message", "not a valid inference.ModelInferRequest message")]
        ) from None


def _final_wanted(request: Any) -> bool:
    """Whether the request asks for ``triton_final_response`` (a boolean, else refused);
    taken out of its parameters, which go to the model."""
    if ENABLE_FINAL not in request.parameters:
        return False
    parameter = request.parameters[ENABLE_FINAL]
    if parameter.WhichOneof("parameter_choice") != "bool_param":
        raise InvalidRequestError([(f"parameters.{ENABLE_FINAL}", "must be a boolean")])
    wanted = bool(parameter.bool_param)
    del request.parameters[ENABLE_FINAL]
    return wanted
