"""``POST /v1/embeddings``: one vector per text, from a model that embeds text
(``Model.embeds_text``: a Transformers feature-extraction model).

Such a model answers a text with one vector per token; the text's embedding is their mean
(mean pooling, what sentence-embedding models are trained for; a model whose own output is
one vector per text is answered with that vector as it is). ``encoding_format`` "base64" is
the vector's float32 values, little-endian, base64-encoded, as OpenAI sends them (the
``openai`` client asks for it unless told otherwise).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from loadonce.core.errors import (
    LoadonceError,
    ModelNotReadyError,
    RequestTooLargeError,
    unfit_output,
)
from loadonce.core.model import Answer
from loadonce.http.dependencies import registry_of
from loadonce.http.disconnect import unless_disconnected
from loadonce.http.json_answer import JSONAnswer
from loadonce.http.large_bodies import parse_request_body
from loadonce.http.request_info import arrival_of, requested_timeout
from loadonce.protocols.openai.errors import FieldError, UnsupportedError
from loadonce.protocols.openai.generation import counted_as
from loadonce.protocols.openai.schemas import EmbeddingRequest, parse, the_texts

__all__ = ["answer_embeddings", "pooled"]


async def answer_embeddings(request: Request) -> Response:
    body = await parse_request_body(request, lambda raw: parse(raw, EmbeddingRequest, "embeddings"))
    texts = the_texts(body.input)
    model = counted_as(request, registry_of(request).get(body.model))
    if not model.is_serving:
        raise ModelNotReadyError(model.name, model.state.value)
    if not model.embeds_text:
        raise UnsupportedError(
            "model",
            f"is '{model.name}', which does not embed text (/v1/embeddings serves "
            "feature-extraction models)",
        )
    try:
        model.refuse_if_too_many(len(texts))
    except RequestTooLargeError as exc:
        # Too many texts is a field's fault (OpenAI's 400, with a code its clients know),
        # not a body too large to read: split the list, not the bytes.
        raise FieldError("input", str(exc), "array_above_max_length") from None
    timeout = requested_timeout(request)

    async def encode(answer: Answer) -> Response:
        data: list[dict[str, Any]] = []
        tokens = 0
        for index, output in enumerate(answer.outputs):
            vector, counted = pooled(output)
            if body.encoding_format != "base64" and not np.isfinite(vector).all():
                # The model's fault, said as such (a 500): JSON's encoder failed with a
                # ValueError that blamed the server.
                raise LoadonceError(
                    f"model '{model.name}' answered an embedding holding NaN or infinity, "
                    "which JSON numbers cannot carry (encoding_format=base64 carries it as it is)"
                )
            tokens += counted
            encoded: Any = (
                base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if body.encoding_format == "base64"
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONAnswer({"object": "list", "data": data, "model": model.name, "usage": usage})

    return await unless_disconnected(
        request,
        model.answer_encoded(texts, encode, timeout=timeout, arrived=arrival_of(request)),
    )


def pooled(output: Any) -> tuple[np.ndarray[Any, np.dtype[np.float32]], int]:
    """One text's vector, and the tokens it was made of (0 when the model answered one vector
    already): the mean of its token vectors (``[[v_token1, v_token2, ...]]``)."""
    try:
        values = np.asarray(output, dtype=np.float32)
    except (TypeError, ValueError) as exc:  # text, ragged lists: the model's answer
        raise unfit_output(f"the model answered no vector of numbers ({exc})") from None
    if values.ndim == 1:
        return values, 0
    if values.ndim == 0 or values.shape[-1] == 0 or values.size == 0:
        raise unfit_output(f"the model answered no vector (shape {values.shape})")
    rows = values.reshape(-1, values.shape[-1])
    return rows.mean(axis=0), rows.shape[0]
