"""``POST /v1/completions`` and ``POST /v1/chat/completions``: one generation of the model's
generation queue (``Model.generate``), answered whole or streamed as OpenAI's chunks.

A generation ended by the request's deadline after it began answers what it generated, with
``finish_reason`` "deadline": OpenAI's clients do not check the value against their list, and
"length" would hide from the caller that the server, not the token limit, cut it short.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from loadonce.core.generation import Delta, Finished, GenerationRequest
from loadonce.core.model import Model
from loadonce.http.dependencies import registry_of
from loadonce.http.disconnect import unless_disconnected
from loadonce.http.json_answer import JSONAnswer
from loadonce.http.large_bodies import parse_request_body
from loadonce.http.request_info import arrival_of, request_id_of, requested_timeout
from loadonce.http.streaming import (
    EventStreamResponse,
    StreamOutcome,
    first_then_rest,
    guarded,
    server_sent_event,
)
from loadonce.protocols.generation import collect
from loadonce.protocols.openai.errors import TOKENS_FIELD_SCOPE_KEY, UnsupportedError, error_event
from loadonce.protocols.openai.schemas import (
    ChatRequest,
    CompletionRequest,
    chat_messages,
    parse,
    the_prompt,
)

__all__ = ["answer_chat", "answer_completion", "counted_as", "dumps"]


class _Completion:
    """The text completions' answer and chunks."""

    prefix = "cmpl"
    whole = chunked = "text_completion"

    def choice(self, text: str, reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}

    def opening(self) -> dict[str, Any] | None:
        return None

    def piece(self, text: str) -> dict[str, Any]:
        return self.choice(text, None)

    def last(self, reason: str) -> dict[str, Any]:
        return self.choice("", reason)


class _Chat(_Completion):
    """The chat completions' answer and chunks: the first chunk says the role."""

    prefix = "chatcmpl"
    whole = "chat.completion"
    chunked = "chat.completion.chunk"

    def choice(self, text: str, reason: str | None) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}

    def opening(self) -> dict[str, Any] | None:
        return self._delta({"role": "assistant", "content": ""}, None)

    def piece(self, text: str) -> dict[str, Any]:
        return self._delta({"content": text}, None)

    def last(self, reason: str) -> dict[str, Any]:
        return self._delta({}, reason)

    def _delta(self, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}


# OpenAI's default max_tokens for completions ("Defaults to 16"); chat has none (the
# model's own default then applies).
COMPLETION_TOKENS_DEFAULT = 16


async def answer_completion(request: Request) -> Response:
    body = await parse_request_body(
        request, lambda raw: parse(raw, CompletionRequest, "completions")
    )
    prompt = the_prompt(body.prompt)
    asked = GenerationRequest(
        prompt=prompt, default_new_tokens=COMPLETION_TOKENS_DEFAULT, **_sampling(body)
    )
    return await _answer(request, body, asked, _Completion())


async def answer_chat(request: Request) -> Response:
    body = await parse_request_body(request, lambda raw: parse(raw, ChatRequest, "chat"))
    if body.max_completion_tokens is not None:
        if body.max_tokens not in (None, body.max_completion_tokens):
            raise UnsupportedError(
                "max_completion_tokens", "and max_tokens differ: send one of them"
            )
        body.max_tokens = body.max_completion_tokens
        request.scope[TOKENS_FIELD_SCOPE_KEY] = "max_completion_tokens"  # what errors name
    asked = GenerationRequest(messages=chat_messages(body.messages), **_sampling(body))
    return await _answer(request, body, asked, _Chat())


def _sampling(body: CompletionRequest | ChatRequest) -> dict[str, Any]:
    return {
        "max_new_tokens": body.max_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "seed": body.seed,
        "repetition_penalty": body.repetition_penalty,
        "stop": body.stops,
    }


async def _answer(
    request: Request,
    body: CompletionRequest | ChatRequest,
    asked: GenerationRequest,
    form: _Completion,
) -> Response:
    model = counted_as(request, registry_of(request).get(body.model))
    if model.is_serving and not model.generates:
        raise UnsupportedError(
            "model",
            f"is '{model.name}', which does not generate text (/v1/completions and "
            "/v1/chat/completions serve text-generation models)",
        )
    timeout = requested_timeout(request)
    events = model.generate(asked, timeout=timeout, arrived=arrival_of(request))
    request_id = request_id_of(request)
    made = {"created": int(time.time()), "model": model.name}
    head = {"id": f"{form.prefix}-{request_id}"}
    if body.stream:
        # Errors before the first token (a prompt over the context, a full queue) are still
        # ordinary answers with their status; after it, a last event. A client that leaves
        # while its request waits for the model takes it out of the queue.
        rest = await unless_disconnected(request, first_then_rest(events))
        chunks = _stream(rest, {**head, "object": form.chunked, **made}, form, body.include_usage)
        outcome = StreamOutcome()
        return EventStreamResponse(
            guarded(chunks, request, request_id, error_event, outcome), outcome
        )
    text, finished = await unless_disconnected(request, collect(events))
    answer = {
        **head,
        "object": form.whole,
        **made,
        "choices": [form.choice(text, finished.reason)],
        "usage": _usage(finished),
    }
    return JSONAnswer(answer)


async def _stream(
    events: AsyncIterator[Delta | Finished],
    head: dict[str, Any],
    form: _Completion,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    # With include_usage, OpenAI sends "usage": null in every chunk but the last one.
    usage: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(choices: list[dict[str, Any]], **more: Any) -> bytes:
        return server_sent_event(dumps({**head, "choices": choices, **usage, **more}))

    async with contextlib.aclosing(events):  # type: ignore[type-var]
        opening = form.opening()
        if opening is not None:
            yield chunk([opening])
        async for event in events:
            if isinstance(event, Delta):
                if event.text:
                    yield chunk([form.piece(event.text)])
                continue
            yield chunk([form.last(event.reason)])
            if include_usage:
                yield chunk([], usage=_usage(event))
    yield server_sent_event("[DONE]")


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }


def counted_as(request: Request, model: Model) -> Model:
    """Label the request's line in the metrics with its model: the routes' metrics read the
    model's name from the path's parameters (``http/routes.py`` ``count_request``), and
    OpenAI's requests name it in the body. Only a declared name ever becomes a label."""
    request.scope.setdefault("path_params", {})["name"] = model.name
    return model


def dumps(value: object) -> str:
    """Compact JSON, as Starlette's JSONResponse writes it."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
