"""The operator's ``cors_allow_origins``: the web pages of other origins that may call the
server's routes from a browser (``loadonce serve``, ``create_app``).

Browsers refuse a page the answers of another origin's server unless its CORS headers allow
that page, and loadonce's inference routes refuse a browser's cross-origin request unless a
CORS middleware of the app allows its origin (``browser_guard.py``, ``app_cors.py``). An app
of one's own adds Starlette's ``CORSMiddleware``; ``loadonce serve`` adds it for this list:
the answers then carry the headers, preflights are answered, and the guard lets those pages
through.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from loadonce.core.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

# Starlette and loadonce's middleware are imported where a middleware is added: the
# supervisor checks the setting (server/settings.py) without importing any web framework.

# What a page allowed here reads of an answer besides the headers every page reads: the
# request id, when to retry or that retrying cannot help (``http/errors.py`` ``retry_headers``),
# and where a binary /v2 answer's JSON ends.
_EXPOSED = ("X-Request-ID", "Retry-After", "x-should-retry", "Inference-Header-Content-Length")


def check_cors_origins(origins: Iterable[str]) -> tuple[str, ...]:
    """The origins, each ``scheme://host[:port]`` as a browser writes it in ``Origin`` (or
    ``*``, every origin); one a browser never sends (a path, a final slash, no scheme) is a
    ``ConfigError``: it was never matched, and every page of it refused without a word."""
    checked = []
    for origin in origins:
        if origin != "*" and not _is_origin(origin):
            raise ConfigError(
                f"cors_allow_origins: {origin!r} is not an origin: give scheme://host[:port] "
                "as a browser sends it (https://app.example.com, http://localhost:3000; no "
                "path, no final slash), or * for every origin"
            )
        # Scheme and host are compared as browsers write them: in lowercase.
        checked.append(origin.lower())
    return tuple(checked)


def _is_origin(text: str) -> bool:
    try:
        parts = urlsplit(text)
        hostname, _ = parts.hostname, parts.port  # a port out of range raises
    except ValueError:
        return False
    return (
        text == text.strip()
        and bool(parts.scheme)
        and bool(hostname)
        and not (parts.path or parts.query or parts.fragment or text.endswith(("?", "#")))
        and parts.username is None
    )


def check_no_cors_of_its_own(app: object) -> None:
    """A ``ConfigError`` if ``app`` has a CORS middleware of its own, where the operator's
    ``cors_allow_origins`` would add a second: each would add its headers, which browsers
    refuse."""
    from starlette.middleware.cors import CORSMiddleware

    entries = getattr(app, "user_middleware", ())
    if any(getattr(entry, "cls", None) is CORSMiddleware for entry in entries):
        raise ConfigError(
            "cors_allow_origins: this app has a CORSMiddleware of its own: list the origins in "
            "its allow_origins (loadonce's routes follow it), not in cors_allow_origins"
        )


def allow_origins(app: FastAPI, origins: Iterable[str]) -> None:
    """A CORS middleware for the operator's ``cors_allow_origins`` (each checked), behind
    loadonce's middleware where ``install_middleware`` already ran on ``app`` (its refusals
    then carry its headers, as the app's answers do), else where loadonce's will be behind.
    An app with a CORS middleware of its own lists its origins there
    (``check_no_cors_of_its_own``)."""
    listed = check_cors_origins(origins)
    if not listed:
        return
    check_no_cors_of_its_own(app)
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    from loadonce.http.middleware import LoadonceMiddleware

    cors = Middleware(
        CORSMiddleware,
        allow_origins=listed,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=_EXPOSED,
    )
    entries = [getattr(entry, "cls", None) for entry in app.user_middleware]
    where = entries.index(LoadonceMiddleware) + 1 if LoadonceMiddleware in entries else 0
    app.user_middleware.insert(where, cors)
