"""The sampled request of the running task, for the code along its path (decode, encode) to
open its spans under, and the no-op those get otherwise.

A context variable holds it, set only when a request is sampled: with tracing off, or for a
request sampled out, ``phase`` costs one lookup and opens nothing."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from typing import Protocol

from loadonce.core.tracing import TRACED_REQUEST


class TracedRequest(Protocol):
    def phase(self, name: str) -> AbstractContextManager[object]: ...

    def failed(self, error: BaseException, status: int) -> None: ...

    def named(self, method: str, route: str) -> None: ...


ACTIVE: ContextVar[TracedRequest | None] = TRACED_REQUEST
_NOTHING: AbstractContextManager[object] = nullcontext()


def phase(name: str) -> AbstractContextManager[object]:
    """A span named ``name`` under the running request's span, if it is sampled; an
    exception leaving it is recorded on it."""
    traced = ACTIVE.get()
    return _NOTHING if traced is None else traced.phase(name)


def record_failure(error: BaseException, status: int) -> None:
    """The running request failed with ``error``, answered ``status``: recorded on its span
    (if sampled), never in the answer."""
    traced = ACTIVE.get()
    if traced is not None:
        traced.failed(error, status)
