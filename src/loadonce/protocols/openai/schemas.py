"""The bodies of OpenAI's completions, chat completions and embeddings requests, as far as
loadonce honours them.

Fields OpenAI defines that would change the answer and that loadonce does not do (``n`` above
1, ``logprobs``, ``echo``, tools...) are refused with a 400 naming the field, unless sent with
the value that means "off": a client that asked for them would otherwise read an answer that
silently ignored them. Fields that change nothing in the answer (``user``, ``store``,
``metadata``...) and names OpenAI does not define are ignored, as OpenAI-compatible servers
do: the ``openai`` client sends only what its caller passed, and newer clients may add more.
Those loadonce knows are still checked as OpenAI checks them (``user`` a string, ``store`` a
boolean, ``metadata`` up to 16 string pairs), as every field here is.

A refusal says OpenAI's ``code`` for the fault (``FieldError``), read from pydantic's error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from loadonce.core.errors import InvalidRequestError
from loadonce.core.generation import LONGEST_STOP_STRING
from loadonce.protocols.openai.errors import FieldError, UnsupportedError

__all__ = [
    "ChatRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "chat_messages",
    "parse",
    "the_prompt",
    "the_texts",
]

# OpenAI's own limit on stop sequences.
MAX_STOPS = 4
# Each is looked for at the end of the text after every token (and a stream holds back what
# could begin one): the work per token grows with the square of its length.
MAX_STOP_CHARACTERS = LONGEST_STOP_STRING


def _off(*values: Any) -> Callable[[Any], bool]:
    """Whether a field holds one of its "off" ``values``, of the same JSON type: ``true`` is
    not the count 1 nor ``0`` the boolean false, though Python's == says so; a number field
    whose off value is a float takes an integer too (``0`` for ``0.0``)."""
    return lambda value: value is None or any(_same(value, off) for off in values)


def _same(value: Any, off: Any) -> bool:
    if isinstance(off, bool) or isinstance(value, bool):
        return value is off
    if isinstance(off, float):
        return isinstance(value, int | float) and value == off
    return type(value) is type(off) and value == off


def _only_text(value: Any) -> bool:
    return value is None or value == ["text"]


def _text_format(value: Any) -> bool:
    return value is None or (isinstance(value, Mapping) and value.get("type") == "text")


_NOT_ONE = "is not supported: loadonce answers one choice per request (n=1)"
_NO_PENALTY = "is not supported by loadonce's generation (send 0, or repetition_penalty)"
_COMMON: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n": (_off(1), _NOT_ONE),
    "presence_penalty": (_off(0.0), _NO_PENALTY),
    "frequency_penalty": (_off(0.0), _NO_PENALTY),
    "logit_bias": (_off({}), "is not supported by loadonce's generation"),
}
_REFUSED: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "completions": {
        **_COMMON,
        "best_of": (_off(1), "is not supported: loadonce generates one sequence per request"),
        "echo": (_off(False), "is not supported: the answer is the new text only"),
        "logprobs": (_off(), "is not supported: loadonce does not return log probabilities"),
        "suffix": (_off(""), "is not supported: loadonce does not insert text"),
    },
    "chat": {
        **_COMMON,
        "logprobs": (_off(False), "is not supported: loadonce does not return log probabilities"),
        "top_logprobs": (_off(0), "is not supported: loadonce does not return log probabilities"),
        "tools": (_off([]), "is not supported: loadonce does not call tools"),
        "tool_choice": (_off("none"), "is not supported: loadonce does not call tools"),
        "functions": (_off([]), "is not supported: loadonce does not call functions"),
        "function_call": (_off("none"), "is not supported: loadonce does not call functions"),
        "response_format": (_text_format, "is not supported: the answer is plain text"),
        "modalities": (_only_text, "is not supported: loadonce answers text only"),
        "audio": (_off(), "is not supported: loadonce answers text only"),
        "prediction": (_off(), "is not supported by loadonce's generation"),
    },
    "embeddings": {
        "dimensions": (_off(), "is not supported: the vectors have the model's own size"),
    },
}


class _Body(BaseModel):
    # Unknown names are ignored (module docstring); the ones refused are checked in parse.
    # Strict, as OpenAI's API is: "0.5" is not a temperature, nor true a count.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1, max_length=256, description="The served model's name.")
    # Changes nothing in the answer; OpenAI's type still (an end user's id).
    user: str | None = None


_B = TypeVar("_B", bound=_Body)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    # OpenAI's types are "boolean or null" (the openai client sends null for None).
    include_usage: bool | None = False


class _Sampling(_Body):
    max_tokens: int | None = Field(None, ge=1, description="At most the model's max_new_tokens.")
    # A float field's bounds are floats: OpenAI's code for a value past them says "decimal"
    # (``_code``), whatever the JSON number the client wrote.
    temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)
    # 0 keeps only the most likely token (greedy), as OpenAI's range, 0 to 1, allows.
    top_p: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[str] | None = Field(None, description="Up to 4 strings; not in the answer.")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool | None = False  # null: false, as OpenAI's reference says
    stream_options: StreamOptions | None = None
    # Not OpenAI's, but common in OpenAI-compatible servers (the client's extra_body).
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0.0, allow_inf_nan=False)

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, stop: str | list[str] | None) -> str | list[str] | None:
        # Each error's type is OpenAI's code for it (``_code``).
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise PydanticCustomError(
                "array_above_max_length", f"at most {MAX_STOPS} stop sequences"
            )
        stops = [stop] if isinstance(stop, str) else stop or []
        if "" in stops:
            raise PydanticCustomError("empty_string", "a stop sequence cannot be empty")
        if any(len(one) > MAX_STOP_CHARACTERS for one in stops):
            raise PydanticCustomError(
                "string_above_max_length",
                f"a stop sequence may be at most {MAX_STOP_CHARACTERS} characters",
            )
        return stop

    # A field's validator, so that the refusal names the field (param), not the body; stream
    # is declared first, so it is read by then.
    @field_validator("stream_options")
    @classmethod
    def _options_of_a_stream(
        cls, options: StreamOptions | None, info: ValidationInfo
    ) -> StreamOptions | None:
        if options is not None and not info.data.get("stream"):
            raise PydanticCustomError(
                "invalid_value", "stream_options is only allowed when stream is true"
            )
        return options

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and bool(self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: Any = Field(description="One string (or a list holding one string).")


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    # Any, not dict: each message is read once, by ``chat_messages`` (a list of dicts was
    # copied message by message first: a chat of a million empty messages, a gigabyte).
    messages: Annotated[
        list[Any],
        WithJsonSchema({"type": "array", "items": {"type": "object"}, "minItems": 1}),
    ] = Field(
        min_length=1,
        description="{role: system, developer, user or assistant; content: a string or a "
        "list of text parts}",
    )
    max_completion_tokens: int | None = Field(None, ge=1, description="max_tokens' new name.")
    # Change nothing in the answer (loadonce stores nothing, and calls no tool: "tools" is
    # refused); OpenAI's types and limits still.
    store: bool | None = None
    parallel_tool_calls: bool | None = None
    metadata: (
        dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None
    ) = Field(None, max_length=16)


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    input: Any = Field(description="A string or a list of strings.")
    encoding_format: Literal["float", "base64"] = "float"


def parse(raw: bytes, body: type[_B], kind: str) -> _B:
    """The request body as ``body``: 400 naming the first field that is not valid, with
    OpenAI's code for why (``FieldError``; a body that is not JSON: ``InvalidRequestError``),
    or the field loadonce does not honour (``UnsupportedError``)."""
    try:
        found = pydantic_core.from_json(raw)
    except ValueError as exc:
        raise InvalidRequestError([("body", f"Invalid JSON: {exc}")]) from None
    if not isinstance(found, dict):
        raise InvalidRequestError([("body", "must be a JSON object")])
    for name, (allowed, why) in _REFUSED[kind].items():
        if name in found and not allowed(found[name]):
            raise UnsupportedError(name, why)
    try:
        return body.model_validate(found)
    except ValidationError as exc:
        # The first field at fault, its path as OpenAI's `param` names it (never the value:
        # it may be secret), and every error in the message.
        first, *others = exc.errors()
        raise FieldError(
            _param(first["loc"]) or "body",
            first["msg"],
            _code(first),
            [(_param(e["loc"]) or "body", e["msg"]) for e in others],
        ) from None


# OpenAI's codes that the validators here raise as the error's type (PydanticCustomError).
_OPENAI_CODES = frozenset(
    {"array_above_max_length", "empty_string", "invalid_value", "string_above_max_length"}
)


def _code(error: ErrorDetails) -> str:
    """OpenAI's code for a field pydantic refused (the words of OpenAI's own answers)."""
    kind, given = error["type"], error.get("input")
    bounds = list(error.get("ctx", {}).values())
    number = "decimal" if any(isinstance(bound, float) for bound in bounds) else "integer"
    if kind in _OPENAI_CODES:
        return kind
    if kind == "missing":
        return "missing_required_parameter"
    if kind in ("greater_than", "greater_than_equal"):
        return f"{number}_below_min_value"
    if kind in ("less_than", "less_than_equal"):
        return f"{number}_above_max_value"
    if kind == "too_short":
        return "empty_array" if given == [] else "array_below_min_length"
    if kind == "too_long":  # a list's items, or an object's keys (metadata)
        return "array_above_max_length" if isinstance(given, list) else "invalid_value"
    if kind == "string_too_short":
        return "empty_string" if given == "" else "string_below_min_length"
    if kind == "string_too_long":
        return "string_above_max_length"
    if kind.endswith(("_type", "_parsing")) or kind == "int_from_float":
        return "invalid_type"
    return "invalid_value"  # a value of the right type the field does not take


# The names pydantic puts in a path for the member of a union it tried ("stop.str" for
# "stop": 5): not fields of the request.
_UNION_MEMBERS = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})


def _param(location: tuple[int | str, ...]) -> str:
    """A field's path as OpenAI's ``param`` names it: ``messages.0.content``, never a union
    member's tag (``stop.str``, ``stop.list[str].0``)."""
    parts = [
        str(part)
        for part in location
        if not (isinstance(part, str) and (part in _UNION_MEMBERS or "[" in part or "-" in part))
    ]
    return ".".join(parts)


def the_prompt(prompt: Any) -> str:
    """The one prompt of a completions request (a list of several would ask for several
    choices, which loadonce answers one request at a time)."""
    # Token ids first: a list of one id is not a list of one prompt.
    if _token_ids(prompt):
        raise UnsupportedError("prompt", "holds token ids, which are not supported: send text")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise UnsupportedError("prompt", "holds several prompts: send one per request")
    if prompt == []:
        raise FieldError("prompt", "cannot be an empty list", "empty_array")
    raise FieldError("prompt", "must be a string", "invalid_type")


def the_texts(given: Any) -> list[str]:
    """The texts of an embeddings request: none empty, as OpenAI says ("cannot be an empty
    string")."""
    texts = [given] if isinstance(given, str) else given
    if isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts):
        empty = texts.index("") if "" in texts else None
        if empty is not None:
            where = "input" if isinstance(given, str) else f"input.{empty}"
            raise FieldError(where, "cannot be an empty string", "empty_string")
        return texts
    if _token_ids(texts):
        raise UnsupportedError("input", "holds token ids, which are not supported: send text")
    if given == []:
        raise FieldError("input", "cannot be an empty list", "empty_array")
    raise FieldError("input", "must be a string or a non-empty list of strings", "invalid_type")


def _token_ids(given: Any) -> bool:
    """A list of integers, or a list of lists of integers (OpenAI's token arrays)."""
    if not isinstance(given, list) or not given:
        return False
    rows = given if all(isinstance(row, list) for row in given) else [given]
    return all(isinstance(i, int) and not isinstance(i, bool) for row in rows for i in row)


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# A tool's (or a function's) answer: the turn after a call loadonce never makes.
_TOOL_ROLES = frozenset({"tool", "function"})
# The calls an assistant's message made: dropped, the model would read a conversation the
# client never had.
_CALLS = ("tool_calls", "function_call")


def chat_messages(messages: list[Any]) -> tuple[dict[str, str], ...]:
    """The messages as the model's chat template takes them: ``{"role", "content"}``, the
    content one string (text parts joined), OpenAI's "developer" role as "system" (the
    templates of open models know "system"). Tool calls and tools' answers are refused, as
    ``tools`` is; a ``name`` is not passed on (the templates of open models know none), but
    is checked as OpenAI checks it."""
    taken = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise FieldError(where, "must be an object", "invalid_type")
        role = message.get("role")
        if isinstance(role, str) and role in _TOOL_ROLES:
            raise UnsupportedError(
                f"{where}.role",
                f"is '{role}', a tool's answer, which is not supported: loadonce does not call "
                "tools",
            )
        if not isinstance(role, str) or role not in _ROLES:  # a list is not even hashable
            raise FieldError(
                f"{where}.role", "must be system, developer, user or assistant", "invalid_value"
            )
        for calls in _CALLS:
            if message.get(calls) not in (None, []):
                raise UnsupportedError(
                    f"{where}.{calls}", "is not supported: loadonce does not call tools"
                )
        if not isinstance(message.get("name", ""), str | None):
            raise FieldError(f"{where}.name", "must be a string", "invalid_type")
        taken.append({"role": _ROLES[role], "content": _text(message.get("content"), where)})
    return tuple(taken)


def _text(content: Any, message: str) -> str:
    where = f"{message}.content"
    if isinstance(content, str):
        return content
    if content == []:  # OpenAI's parts are at least one
        raise FieldError(where, "cannot be an empty list of parts", "empty_array")
    if isinstance(content, list):
        pieces = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = str(part.get("type"))[:40] if isinstance(part, dict) else "?"
                raise UnsupportedError(where, f"holds a part of type '{kind}': text parts only")
            text = part.get("text")
            if not isinstance(text, str):
                raise FieldError(where, "a text part's 'text' must be a string", "invalid_type")
            pieces.append(text)
        return "".join(pieces)
    raise FieldError(where, "must be a string or a list of text parts", "invalid_type")
