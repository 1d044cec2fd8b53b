"""The exceptions loadonce raises, each carrying its HTTP status (``status``) and the message
a client reads (``client_message``): one mapping, in the classes, serves both protocols
(``http/errors.py`` renders it)."""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from loadonce.core.log_safe import quoted

if TYPE_CHECKING:
    # Not at run time: ``loadonce`` resolves these errors when imported, before ``loadonce
    # serve`` takes its stop signals (server/early_stop.py); pydantic took half that time.
    from pydantic import ValidationError


class LoadonceError(Exception):
    """Base class of every error loadonce raises on purpose.

    ``status``: the HTTP status a request that meets it is answered with (a subclass's own,
    found along the class hierarchy as any class attribute is). A 500 means a fault of the
    server's, not of the request: it is logged under the request id.
    """

    status: ClassVar[int] = 500
    # Whole seconds after which the same request may be answered (HTTP's Retry-After, gRPC's
    # retry pushback): set only where waiting alone can help (an overloaded model or worker,
    # one still loading, a server draining). None: sending it again cannot help until the
    # request or the server's state changes (a bad request, a model an operator unloaded).
    retry_after_s: int | None = None

    def client_message(self) -> str:
        """What the client is told."""
        return str(self)


class ConfigError(LoadonceError):
    """The declared models or server options are invalid; raised before anything loads."""


class ModelLoadError(LoadonceError):
    """A model could not be loaded (or warmed up); startup stops with this message.

    The message is one line that names the model, where it was loaded from and the cause,
    because it is what an operator reads in the log of a server that refused to start.
    """

    def __init__(self, model: str, source: str | Path | None, cause: BaseException | str) -> None:
        self.model = model
        self.source = None if source is None else str(source)
        self.cause = cause
        reason = cause if isinstance(cause, str) else describe_exception(cause)
        where = f" from {self.source}" if self.source else ""
        super().__init__(f"model '{model}' failed to load{where}: {reason}")


class ModelNotFoundError(LoadonceError):
    """No model of that name is declared in this registry (HTTP 404)."""

    status = 404

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listing = ", ".join(repr(k) for k in known) or "none"
        super().__init__(f"model {quoted(name)} is not served here; models served: {listing}")


# The states (``ModelState``'s values, and a closing queue's "unloading") a model leaves on its
# own: a request refused in one of them may be answered soon. "unloading": the model is being
# taken out of service, by a shutdown or a reload (another worker, or the reloaded version,
# answers) or by an operator's unload (the retry then meets "unloaded", told not to retry).
_PASSING_STATES = frozenset({"pending", "loading", "reloading", "unloading"})


def passes_on_its_own(state: str) -> bool:
    """Whether a model in ``state`` (not ready) may be ready soon without an operator."""
    return state in _PASSING_STATES


class ModelNotReadyError(LoadonceError):
    """The model exists but is not ready to predict: loading, failed or unloaded (HTTP 503;
    Retry-After only in a state it leaves on its own: a failed or unloaded model stays so
    until an operator acts)."""

    status = 503

    def __init__(self, name: str, state: str) -> None:
        self.name = name
        self.state = state
        if passes_on_its_own(state):
            self.retry_after_s = 1
        super().__init__(f"model '{name}' is not ready (state: {state})")


class QueueFullError(LoadonceError):
    """The model's queue holds as many examples as it may (HTTP 503 with Retry-After)."""

    status = 503

    def __init__(
        self,
        name: str,
        queued: int,
        limit: int,
        *,
        expected_wait: float | None = None,
        counted: str = "examples",
        retry_after_s: float | None = None,
    ) -> None:
        """``counted``: what ``max_queue`` counts (a generating model's queue holds requests
        waiting to join its batch, not examples). ``retry_after_s``: when the queue, at the
        model's measured pace, will have room for it (unknown: a second)."""
        self.name = name
        self.retry_after_s = whole_seconds(retry_after_s)
        why = (
            f"{queued} {counted} are queued (max_queue {limit})"
            if expected_wait is None
            else f"at the current pace the answer would come after {expected_wait:.2f} s, "
            "past this request's deadline"
        )
        super().__init__(f"model '{name}' is overloaded: {why}; retry shortly")


def whole_seconds(seconds: float | None) -> int:
    """A wait as Retry-After says it: whole seconds, rounded up, at least one (unknown: one)."""
    if seconds is None or not seconds < 86_400:
        return 1 if seconds is None else 86_400
    return max(1, math.ceil(seconds))


class DeadlineExceededError(LoadonceError):
    """The request's deadline passed before the model answered (HTTP 504)."""

    status = 504

    def __init__(self, name: str, timeout: float | None = None) -> None:
        self.name = name
        limit = "" if timeout is None else f" of {timeout:g} s"
        super().__init__(f"model '{name}' did not answer within the deadline{limit}")


class DeadlineTooShortError(DeadlineExceededError):
    """The request's deadline is shorter than one call of the model takes at its measured
    pace, and the model is busy (HTTP 504, gRPC DEADLINE_EXCEEDED, as when the deadline
    passes): refused at once, since sending it again with the same deadline cannot help,
    where a full queue's 503 would have told the client to retry."""

    def __init__(
        self, name: str, left: float, seconds_per_call: float, *, call: str = "call of it"
    ) -> None:
        """``call``: what takes ``seconds_per_call`` (a generating model: a step of its
        generation, which its first token needs at the least)."""
        self.name = name
        LoadonceError.__init__(
            self,
            f"model '{name}' cannot answer within the {left:.3g} s left of the deadline: one "
            f"{call} takes {seconds_per_call:.3g} s at its current pace; send the request "
            "with a longer deadline",
        )


class ClientDisconnectedError(LoadonceError):
    """The client went away before its answer was ready; its request left the queue."""

    # Nobody reads this answer; nginx's 499 says "client closed request" in access logs.
    status = 499


class ModelRaisedError(LoadonceError):
    """The model's own code raised (its prepare, predict or output): wrapped where it
    happened, in the model's thread, so that "the model raised" is said of the model only
    (HTTP 500, details in the server log)."""

    def __init__(self, model_error: BaseException, *, model: str | None = None) -> None:
        self.model_error = model_error
        # The model's name, once known (the code that raises it may not know it): the
        # client's message names it.
        self.model = model
        super().__init__(f"the model raised {describe_exception(model_error)}")

    def of_model(self, name: str) -> ModelRaisedError:
        """This error, naming the model ``name`` unless it names one already."""
        if self.model is None:
            self.model = name
        return self


def unfit_output(message: str) -> ModelRaisedError:
    """The model's answer, which the protocol's answer cannot be made of (outputs that differ
    between examples, values its declared datatype cannot hold): the model's fault, a 500
    saying "the model raised RuntimeError", never the server's ("the server failed")."""
    return ModelRaisedError(RuntimeError(message))


def as_exception(error: BaseException) -> Exception:
    """What a model's code raised, as an Exception: SystemExit, KeyboardInterrupt or
    GeneratorExit raised in a model's thread are its failure, never the server's exit (one
    re-raised on the event loop took the server out of service)."""
    if isinstance(error, Exception):
        return error
    wrapped = RuntimeError(f"the model's code raised {describe_exception(error)}")
    wrapped.__cause__ = error
    return wrapped


def output_error(error: BaseException) -> BaseException:
    """An error encoding the model's answer, as whose it is: an integer too long for Python
    to write as text (past ``sys.set_int_max_str_digits``, 4,300 digits), in a JSON value, a
    BYTES element or a key, is the model's output that no answer can carry (its readers,
    Python's json among them, refuse such a number too), not the server's failure. Found
    from the error, after the fact: checking every integer of every answer cost them all."""
    if isinstance(error, ValueError) and "integer string conversion" in str(error):
        limit = sys.get_int_max_str_digits()
        return ModelRaisedError(
            TypeError(
                f"the model's output holds an integer of more than {limit} digits, "
                "which no answer can carry as text"
            )
        )
    return error


class InvalidInputError(LoadonceError, ValueError):
    """The request's inputs do not fit the model (HTTP 400).

    Raise it from your own predictor to answer 400 with your message instead of a 500:
    the message should say what was expected.
    """

    status = 400

    def client_message(self) -> str:
        return f"invalid inputs: {self}"


class NewTokensLimitError(InvalidInputError):
    """More new tokens asked for than the model's cap allows (HTTP 400; OpenAI's routes name
    the field, ``max_tokens``)."""


class InvalidFieldError(InvalidInputError):
    """One setting of the request is outside what the model takes (HTTP 400); ``field``: its
    name, which OpenAI's routes give as ``param``."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class TextInputError(InvalidInputError):
    """The text a request gives a text model (its prompt, chat messages, texts to embed)
    cannot be taken as it is (HTTP 400; OpenAI's routes name its field: ``prompt``,
    ``messages`` or ``input``)."""


class ContextLengthError(TextInputError):
    """The prompt (with the new tokens asked for) does not fit the model's context (HTTP 400;
    OpenAI's routes add its code, ``context_length_exceeded``, which clients look for)."""


class InvalidRequestError(LoadonceError):
    """The request is not of the form its route expects (its body, a header): each invalid
    field, dotted (``body.inputs``, ``header.X-Request-Timeout``), and why. HTTP 422 on the
    JSON routes, with the fields listed; 400 under the Open Inference Protocol, which says so.
    Every route's parser raises this one type."""

    status = 422

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.fields = fields
        summary = "; ".join(f"{field}: {message}" for field, message in fields)
        super().__init__(f"invalid request: {summary}")

    @classmethod
    def from_validation(cls, exc: ValidationError, *, under: str = "body") -> InvalidRequestError:
        """Pydantic's errors, each located under ``under`` (never the value, which may be a
        secret)."""
        return cls(
            [
                (".".join(str(part) for part in (under, *error["loc"])), error["msg"])
                for error in exc.errors()
            ]
        )


def describe_validation(exc: ValidationError, *, whole: str = "value") -> str:
    """Pydantic's errors as one line: each field's dotted path and what is wrong with it
    (never the value, which may be a secret)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or whole}: {_plain(error['msg'])}"
        for error in exc.errors()
    )


def _plain(message: str) -> str:
    """Pydantic's message without its "Value error, " prefix (a validator's own words)."""
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


# An exception's message is cut after this many characters where loadonce describes it.
_LONGEST_DESCRIPTION = 2000


def describe_exception(exc: BaseException) -> str:
    """One line for an exception: its type and its message, never a traceback."""
    try:
        text = " ".join(str(exc).split())
    except Exception:  # a model's exception whose own __str__ fails
        text = "(its message could not be read)"
    if len(text) > _LONGEST_DESCRIPTION:  # a model's 5 MB message made a 5 MB log line
        cut = len(text) - _LONGEST_DESCRIPTION
        text = f"{text[:_LONGEST_DESCRIPTION]}... ({cut:,} more characters)"
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class RequestTooLargeError(LoadonceError):
    """The request is larger than a configured limit: its body, its number of examples, or
    one BYTES element (HTTP 413)."""

    status = 413


class BodiesInFlightError(LoadonceError):
    """The worker holds as many bytes of request bodies as it may, its
    ``max_body_bytes_in_flight`` (HTTP 503 with Retry-After; gRPC UNAVAILABLE)."""

    status = 503
    retry_after_s = 1  # bodies in flight are answered and let go within moments

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this server holds {limit} bytes of request bodies in flight, its "
            "max_body_bytes_in_flight; retry shortly"
        )


class ForbiddenError(LoadonceError):
    """The request asks for something only the operator may allow: an artifact outside the
    configured roots, or a format that runs code for a model not trusted (HTTP 403)."""

    status = 403


class NotAvailableHereError(LoadonceError):
    """An operation this deployment does not offer, with what to do instead (HTTP 501): under
    Ray Serve, a reload reaches one replica, so reloading is Ray's redeploy."""

    status = 501


# An absolute path in a message: a slash that does not follow a letter, a digit, a colon or
# another slash (so "http://host/x" and "a/b" are left alone), up to a space or a quote.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/[^\s'\"`,;:()\[\]<>]*")


# A native library's stack trace in its message (XGBoost's "Stack trace: [bt] (0) ..."), and
# a memory address: where libraries are loaded, which address randomisation hides.
_NATIVE_TRACE = re.compile(r"\s*Stack trace:.*", re.DOTALL)
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")


def without_native_trace(message: str) -> str:
    """``message`` without the native stack trace a library's error may end with (XGBoost's
    "Stack trace: [bt] ..."), which runs to the end of the message."""
    return _NATIVE_TRACE.sub("", message)


def without_paths(message: str, known: Iterable[str | Path] = ()) -> str:
    """A message for a client without the admin scope: every server file path replaced by
    ``<path>`` (the server log and admin answers keep them), a native stack trace left out
    and memory addresses replaced by ``<address>``. ``known``: paths the message may
    quote whole, spaces and all (an artifact's), replaced first: the pattern stops at a
    space, and "/srv/Secret Project/m.skops" left "Secret Project/m.skops" to be read."""
    message = without_native_trace(message)
    for path in sorted(_with_spaced_parents(known), key=len, reverse=True):
        message = message.replace(path, "<path>")
    return _ADDRESS.sub("<address>", _ABSOLUTE_PATH.sub("<path>", message))


def _with_spaced_parents(paths: Iterable[str | Path]) -> set[str]:
    """Each path as given and resolved, with each of its directories whose name holds a
    space (a message may quote the directory alone)."""
    found: set[str] = set()
    for given in paths:
        # realpath, not Path.resolve: a symbolic link loop (an artifact that became one
        # after its load failed) made resolve raise, and every answer showing the error
        # (/models, the repository index) a 500, until the next load.
        for path in {Path(given), Path(os.path.realpath(given))}:
            found.add(str(path))
            found.update(str(parent) for parent in path.parents if " " in parent.name)
    return {path for path in found if len(path) > 1}
