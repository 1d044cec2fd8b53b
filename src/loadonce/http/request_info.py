"""What loadonce reads from a request before any route runs: its id, when it arrived, its
own deadline, and its path as the app's routes see it."""

from __future__ import annotations

import itertools
import os
import re
import uuid
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from loadonce.core.errors import InvalidRequestError

REQUEST_ID_HEADER = "X-Request-ID"
# Where LoadonceMiddleware keeps the id it chose, so every part of the answer uses it.
REQUEST_ID_SCOPE_KEY = "loadonce.request_id"
# The status the server's HTTP protocol answered a request with itself, once its route ran
# (a bad chunk in its body): what the request's log line says the client got.
REFUSED_SCOPE_KEY = "loadonce.refused_status"
# The status a streamed answer ended with (an error midway, 499 for a client that left),
# once it ended: what its log line says, as the metrics do.
ENDED_SCOPE_KEY = "loadonce.ended_status"
# The event loop's time when the request first reached loadonce (its outermost middleware):
# a request's deadline counts from there, body reading and loop lag included.
ARRIVED_SCOPE_KEY = "loadonce.arrived"
# A request's own deadline in seconds, for every predict route (at most the model's timeout_s).
TIMEOUT_HEADER = "X-Request-Timeout"
_TIMEOUT_KEY = TIMEOUT_HEADER.lower().encode("latin-1")
# A client's id is echoed only if it is short and plain, so it cannot forge log lines.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode("latin-1")


def timeout_header_parameter(description: str) -> dict[str, Any]:
    """The OpenAPI entry of the request timeout header, for a route that honours it."""
    return {
        "name": TIMEOUT_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0},
        "description": description,
    }


def request_id_of(request: Request) -> str:
    """The id the request log middleware chose, else the client's, else a new one."""
    chosen = request.scope.get(REQUEST_ID_SCOPE_KEY)
    if isinstance(chosen, str):
        return chosen
    return request_id_from(request.scope["headers"])


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID if it sent one, short and plain, else a new one."""
    # Read from the raw ASGI headers: Starlette's Headers would be built for this one lookup.
    given: bytes | None = None
    for key, value in headers:
        if key == _REQUEST_ID_KEY:
            if given is not None:
                # Two: no one id of the request's (the first was taken, so a client's id
                # won over the one a proxy appended after it), as two traceparents are none.
                return new_request_id()
            given = value
    if given is not None:
        text = given.decode("latin-1")
        if _CLIENT_ID.match(text):
            return text
    return new_request_id()


class _RequestIds:
    """New ids: a random prefix per process and a counter, 32 hex digits like a uuid4's.
    uuid4 per request cost 3% of the event loop's time under load; a request id needs to be
    unique, not secret. The prefix is drawn again in a forked child (workers are forked from
    one process), so workers and restarts never share one."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.counter = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_IDS = _RequestIds()
os.register_at_fork(after_in_child=_IDS.reset)


def new_request_id() -> str:
    return _IDS.new()


def arrival_of(request: Request) -> float | None:
    """When the request reached loadonce, in the loop's time (None: an app without loadonce's
    request log middleware; the deadline then counts from the route)."""
    arrived = request.scope.get(ARRIVED_SCOPE_KEY)
    return arrived if isinstance(arrived, float) else None


_SECONDS = re.compile(rb"[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?|\.[0-9]+([eE][+-]?[0-9]+)?")


def requested_timeout(request: Request) -> float | None:
    """The X-Request-Timeout header in seconds, if sent (``InvalidRequestError`` when it is
    not a positive number): read from the raw ASGI headers, which cost less than Starlette's
    Headers."""
    for key, value in request.scope["headers"]:
        if key == _TIMEOUT_KEY:
            # A decimal number as HTTP headers write them: float() also takes "1_0", "nan"
            # and "0x1p3", none of which a client means as seconds. The spaces and tabs
            # around a field's value are not part of it (RFC 9110, 5.5).
            value = value.strip(b" \t")
            timeout = float(value) if _SECONDS.fullmatch(value) else -1.0
            if not 0 < timeout < float("inf"):
                raise InvalidRequestError(
                    [(f"header.{TIMEOUT_HEADER}", "must be a positive number of seconds")]
                )
            return timeout
    return None


def route_path(scope: Scope) -> str:
    """The path the app's routes see: without the prefix the app is mounted under (Ray Serve's
    route_prefix, a proxy's root_path), as Starlette's router matches it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path
