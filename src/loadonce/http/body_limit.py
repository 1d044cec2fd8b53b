"""The body size limits, enforced before a route reads the body: 413 at once when
Content-Length is over ``Limits.max_body_bytes``; a body sent without a length (chunked) is
counted as it arrives and refused once it passes that limit; and every body's bytes are
counted, as they arrive, in the worker's ``BodyBudget`` (``Limits.max_body_bytes_in_flight``),
given back when the request ends."""

from __future__ import annotations

import sys

from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from loadonce.core.body_budget import BodyBudget, HeldBody
from loadonce.core.limits import body_too_large
from loadonce.http.errors import raw_error_response

_CONTENT_LENGTH = b"content-length"
# Where a request's scope keeps its ``HeldBody`` (a decompressed body is counted in it too).
HELD_BODY_SCOPE_KEY = "loadonce.held_body"


def declared_too_large(scope: Scope, limit: int) -> Response | None:
    """The 413 answer when the request's Content-Length is over ``limit``, else None."""
    for name, value in scope["headers"]:
        if name == _CONTENT_LENGTH:
            if value.isdigit() and int(value) > limit:
                return raw_error_response(413, str(body_too_large(limit)), scope)
            break
    return None


class CountedBody(HeldBody):
    """``receive``, counting the body: the 413's error once it passes ``limit`` (None: no
    limit), ``BodiesInFlightError`` when the worker's budget is spent (``HeldBody.take``,
    written out here: every request's body passes through it). ``release()`` gives the
    budget back when the request ends."""

    __slots__ = ("limit", "receive")

    def __init__(
        self, receive: Receive, limit: int | None, budget: BodyBudget, scope: Scope
    ) -> None:
        self.budget = budget
        self.held = 0
        self.receive = receive
        self.limit = sys.maxsize if limit is None else limit
        scope[HELD_BODY_SCOPE_KEY] = self

    async def __call__(self) -> Message:
        message = await self.receive()
        body = message.get("body")  # only "http.request" has one
        if body:
            size = len(body)
            held = self.held + size
            if held > self.limit:
                # Raised inside the route that reads the body: loadonce's routes answer it
                # as a 413 (and BodiesInFlightError as a 503).
                raise body_too_large(self.limit)
            budget = self.budget
            total = budget.held + size
            if total > budget.most and budget.held > self.held:
                raise budget.refusal()
            budget.held = total
            self.held = held
        return message


def held_body(scope: Scope) -> HeldBody | None:
    """The request's count of its body's bytes (None: loadonce's middleware did not count
    it: a WebSocket, an app without ``install_middleware``)."""
    held: HeldBody | None = scope.get(HELD_BODY_SCOPE_KEY)
    return held
