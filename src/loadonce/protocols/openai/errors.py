"""How the OpenAI-compatible routes answer errors: OpenAI's body, ``{"error": {"message",
"type", "param", "code"}}``, with the status loadonce's one mapping gives (``http/errors.py``),
except that a request that is not valid is a 400, as OpenAI answers it (not 422).

``code`` is OpenAI's word for why a field was refused (``invalid_type``, ``empty_array``,
``integer_above_max_value``, ``unsupported_value``...), as OpenAI's own answers carry it: a
client can branch on it without parsing the message. A body that is not JSON at all has none,
as OpenAI's has none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import Response

from loadonce.core.errors import (
    ContextLengthError,
    InvalidFieldError,
    InvalidInputError,
    InvalidRequestError,
    ModelNotFoundError,
    NewTokensLimitError,
    TextInputError,
)
from loadonce.http.errors import openai_error, status_and_message
from loadonce.http.protocol_roots import OPENAI_ROOT
from loadonce.http.routes import LoadonceRoute
from loadonce.http.streaming import server_sent_event

__all__ = [
    "TOKENS_FIELD_SCOPE_KEY",
    "FieldError",
    "OpenAIRoute",
    "UnsupportedError",
    "error_event",
    "openai_error_for",
]

# The name the client gave the limit of new tokens (max_tokens, or max_completion_tokens).
TOKENS_FIELD_SCOPE_KEY = "loadonce.openai_tokens_field"


class FieldError(InvalidRequestError):
    """A field of the request that is not valid (400): ``param`` its path as OpenAI names it
    (``messages.0.content``), ``code`` OpenAI's word for what is wrong with it; ``others``:
    more fields at fault, said in the message too."""

    def __init__(
        self, param: str, message: str, code: str, others: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.code = code
        super().__init__([(param, message), *others])


class UnsupportedError(InvalidInputError):
    """A request field this server does not honour (400, naming the field in ``param``):
    answering as if it were honoured would mislead the client. Its code is OpenAI's for a
    value it does not take (the field's "off" value is taken)."""

    code = "unsupported_value"

    def __init__(self, param: str, why: str) -> None:
        self.param = param
        super().__init__(f"'{param}' {why}")

    def client_message(self) -> str:
        return str(self)


def openai_error_for(exc: Exception, request: Request, request_id: str) -> Response:
    status, message = status_and_message(exc, request, request_id)
    param = code = None
    if isinstance(exc, InvalidRequestError):
        status = 400
        param = exc.fields[0][0] if exc.fields else None
        code = exc.code if isinstance(exc, FieldError) else None
    elif isinstance(exc, UnsupportedError):
        param, code = exc.param, exc.code
    elif isinstance(exc, ModelNotFoundError):
        param, code = "model", "model_not_found"
    elif isinstance(exc, NewTokensLimitError):
        # The field the client sent: max_tokens, or its new name on /v1/chat/completions.
        param = request.scope.get(TOKENS_FIELD_SCOPE_KEY, "max_tokens")
        code = "integer_above_max_value"  # its least is checked first (ge=1)
    elif isinstance(exc, ContextLengthError):
        # OpenAI's words: what LangChain and others look for to shorten and retry.
        param, code = _text_field(request), "context_length_exceeded"
    elif isinstance(exc, InvalidFieldError):
        param, code = exc.field, "invalid_value"
    elif isinstance(exc, TextInputError):  # the text itself (no token, no chat template)
        param, code = _text_field(request), "invalid_value"
    return openai_error(status, message, request_id, param=param, code=code)


def _text_field(request: Request) -> str:
    path = request.url.path
    if path.endswith("/chat/completions"):
        return "messages"
    return "input" if path.endswith("/embeddings") else "prompt"


def error_event(status: int, message: str) -> bytes:
    """The last event of a stream that failed after it began (its 200 has left already):
    OpenAI's clients raise ``APIError`` with it."""
    return server_sent_event(bytes(openai_error(status, message).body).decode())


class OpenAIRoute(LoadonceRoute):
    """A route of the OpenAI-compatible protocol: OpenAI's error body."""

    error_for = staticmethod(openai_error_for)
    protocol_root = OPENAI_ROOT
    refusal: ClassVar[dict[str, Any]] = {
        "description": "Refused (the status says why: 400 not valid, 404 no such model...)",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "message": {"type": "string"},
                                "type": {"type": "string"},
                                "param": {"type": ["string", "null"]},
                                "code": {"type": ["string", "null"]},
                            },
                        }
                    },
                    "required": ["error"],
                }
            }
        },
    }
