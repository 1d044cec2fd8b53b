"""``ModelStreamInfer``: the protocol's bidirectional stream of inference requests, as
tritonclient's ``start_stream`` / ``async_stream_infer`` and its aio ``stream_infer`` use it.

Each request of the stream is answered as ``ModelInfer`` answers it (same model lookup,
decoding, queue, deadline, error mapping), its response in the order the requests came, as
Triton answers a model that is not decoupled (every loadonce model). The requests run at once,
as in Triton (its stream handler issues each request it reads and reads the next at once, then
writes the responses in order): answered one at a time, a stream could never fill a batch,
and one slow request held every one behind it. At most ``STREAM_WINDOW`` of a stream's
requests are read and not yet answered; past it, the stream is not read (gRPC's flow control
holds its client back). Each one's bytes are counted in the worker's budget of bodies in
flight from the moment it is read until it is answered, as a unary call's are, and each
waits in its model's queue like any other request (a full queue is that request's error).
A request that fails is answered with its error in ``error_message`` and the stream goes on,
as in Triton; the stream itself ends when its client closes it (or its deadline, its
cancellation), once every request read is answered. With Triton's
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


# The most requests of one stream read and not yet answered (its memory: as many messages,
# each within max_body_bytes, all of them within the body budget, and their responses).
STREAM_WINDOW = 32


async def answer_stream(
    call: StreamCall,
    context: grpc.aio.ServicerContext,
    infer: Infer,
    *,
    route: str,
    budget: BodyBudget,
    first_message_timeout_s: float | None,
    stopping: asyncio.Event,
    window: int = STREAM_WINDOW,
) -> None:
    """Answer each request of the stream with ``infer`` (``ModelInfer``'s work), at once,
    writing the responses in the requests' order; at most ``window`` of them in flight.

    The first request must arrive within ``first_message_timeout_s`` (as a unary call's
    message must): a stream that sends nothing would hold its place among the calls in flight
    for good. Later ones may take their time, as a client's stream is meant to stay open,
    until ``stopping`` is set: the server stops, and a stream waiting for its next request
    ends then (it held the server's stop for its whole grace period), once what it read is
    answered."""
    # Each request's answer, in the order they came; the writer takes them one by one, and
    # gives back the request's place in the window once its answer is written.
    answers: asyncio.Queue[asyncio.Future[Any] | None] = asyncio.Queue()
    places = asyncio.Semaphore(window)
    writer = asyncio.ensure_future(_write_in_order(answers, places, context))
    messages = call.messages
    first = True
    try:
        while True:
            await _unless_writer_failed(places.acquire(), writer)
            try:
                async with asyncio.timeout(first_message_timeout_s if first else None):
                    raw = await _next_unless(messages, stopping)
            except StopAsyncIteration:
                break  # the client closed its side, or the server stops
            except TimeoutError:
                raise MessageTimeoutError(
                    f"the stream sent no request within {first_message_timeout_s:g} s of the call"
                ) from None
            first = False
            answers.put_nowait(_answering(raw, budget, context, infer, route, call.request_id))
        answers.put_nowait(None)
        await writer
    finally:
        writer.cancel()  # a failed read, the client gone: what is in flight is not wanted
        while not answers.empty():
            waiting = answers.get_nowait()
            if waiting is not None:
                waiting.cancel()


def _answering(
    raw: bytes,
    budget: BodyBudget,
    context: grpc.aio.ServicerContext,
    infer: Infer,
    route: str,
    request_id: str,
) -> asyncio.Future[Any]:
    """The request in ``raw`` being answered; its bytes counted in the budget now, before the
    next is read (refused: its answer is that error, and the bytes are let go at once)."""
    held = HeldBody(budget)
    try:
        held.take(len(raw))
    except LoadonceError as exc:
        refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        refused.set_result(_error_response(exc, route, request_id))
        return refused
    answering = asyncio.ensure_future(_answer(raw, context, infer, route, request_id))
    # Let go however it ends: cancelled before it began (the stream failed), it never ran.
    answering.add_done_callback(lambda _: held.release())
    return answering


async def _unless_writer_failed(wait: Awaitable[Any], writer: asyncio.Future[None]) -> None:
    """``wait`` (for a place in the window), unless the writer fails first (its client is
    gone): then its error, instead of waiting for a place it will never give back."""
    waiting = asyncio.ensure_future(wait)
    try:
        await asyncio.wait((waiting, writer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiting.done():
            waiting.cancel()
    if not waiting.done() or waiting.cancelled():
        writer.result()  # its error
        raise RuntimeError("the stream's writer ended before its last answer")
    waiting.result()


async def _write_in_order(
    answers: asyncio.Queue[asyncio.Future[Any] | None],
    places: asyncio.Semaphore,
    context: grpc.aio.ServicerContext,
) -> None:
    """Write each answer once it is ready, in the order they were queued, until None."""
    while (answer := await answers.get()) is not None:
        await context.write(await answer)
        places.release()


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
        elif not reading.cancelled():
            # Its end looked at even when this wait was cancelled (gRPC failed the call as
            # its read ended): asyncio logged "Task exception was never retrieved" otherwise.
            reading.exception()
    if not reading.done() or reading.cancelled():
        raise StopAsyncIteration
    return reading.result()


async def _answer(
    raw: bytes,
    context: grpc.aio.ServicerContext,
    infer: Infer,
    route: str,
    request_id: str,
) -> Any:
    """One request's response, or its error, as the stream's message; an error carries the
    request's id too, as Triton's does, for clients that match answers by it."""
    request = None
    try:
        request = _request(raw)
        final = _final_wanted(request)
        response = await infer(request, context)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        failed = _error_response(exc, route, request_id)
        if request is not None and request.id:
            failed.infer_response.id = request.id
        return failed
    if final:
        response.parameters[FINAL].bool_param = True
    return ModelStreamInferResponse(infer_response=response)


def _error_response(exc: Exception, route: str, request_id: str) -> Any:
    """A request's error as the stream's message (the stream goes on)."""
    _, message = describe_error(exc, route, request_id)
    release_tracebacks(exc)
    return ModelStreamInferResponse(error_message=message)


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
