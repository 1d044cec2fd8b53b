"""Keeping web pages away from a server they were not served by.

Two attacks reach a server on the developer's own machine through their browser:

- **Cross-site WebSockets.** A page may open a WebSocket to any server and read what it
  sends (browsers apply no CORS to them): a handshake a browser marks as coming from another
  site or origin is refused on every route.
- **Cross-site requests.** Any page may POST to ``http://127.0.0.1:8000`` (with a
  ``text/plain`` body, no CORS preflight happens): without API keys it could unload or
  reload every model, and make the server compute for it (a page cannot read the answer,
  but the server spends its time on it all the same). Browsers say where a request comes
  from (``Origin``, and ``Sec-Fetch-Site``), so control routes refuse a request that a
  browser marks as coming from another origin, and loadonce's own inference routes do too
  unless a CORS middleware of the app allows its origin (``app_cors.py``: the app's own, or
  the one the operator's ``cors_allow_origins`` adds): an origin allowed to read the answers
  is one meant to call the server. A route of the user's own app is the user's to guard
  (``own_routes.py``): an OAuth provider's ``form_post`` callback is a cross-site POST by
  design. Clients that are not browsers send neither header and are not affected.
- **DNS rebinding.** A page on ``evil.example`` whose name is made to resolve to 127.0.0.1
  is "same-origin" to the browser, but its requests carry ``Host: evil.example``. A request
  that arrives on a loopback address (the connection's own address, ``scope["server"]``)
  must name a loopback host or one of ``allowed_hosts``. The connection's address, not the
  one the server is bound to: a server bound to 0.0.0.0 is reached through 127.0.0.1 by a
  browser on the same machine too (a page rebinding its name to 127.0.0.1, or fetching
  ``http://0.0.0.0:port``), and ASGI does not say the bound address anyway (plain uvicorn).
  A proxy or sidecar on the same machine that passes on its own ``Host`` is listed in
  ``allowed_hosts``, as the refusal says.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from starlette.types import Scope

from loadonce.http.access_keys import RouteFamily
from loadonce.http.allowed_hosts import host_allowed
from loadonce.http.app_cors import app_allows_origin
from loadonce.http.host_header import host_refusal, valid_host
from loadonce.http.loopback import is_loopback_host
from loadonce.http.own_routes import loadonce_route
from loadonce.http.route_families import family_in

_HOST = b"host"
_ORIGIN = b"origin"
_FETCH_SITE = b"sec-fetch-site"
# "none": typed in the address bar or a bookmark; "same-origin": a page this server served.
_OWN_SITES = (b"same-origin", b"none")
# Routes whose answers cost the server's work (and say what it serves): its inference routes.
_GUARDED_FAMILIES = (RouteFamily.INFERENCE, RouteFamily.STATISTICS)
_INFERENCE_REFUSAL = (
    "this route refuses requests a browser sends from a page of another {what}: such a page "
    "could make the server compute for it. To let a web page of another origin call it, the "
    "operator lists that origin in cors_allow_origins (LOADONCE_CORS_ALLOW_ORIGINS), or in "
    "the allow_origins of their app's own CORSMiddleware"
)


def _hostname(host_header: str) -> str:
    """The name in a Host header, without its port (``[::1]:8000`` -> ``::1``)."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")] if "]" in host_header else host_header
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def refusal(scope: Scope, allowed_hosts: tuple[str, ...] = ()) -> tuple[int, str] | None:
    """The status refusing a request and why, or None: 400 for a missing, repeated or
    malformed Host (``host_header.py``), else 403 for what the guard keeps out. On the hot
    path: one pass over the headers, and the route's family, whose route it is and what the
    app's CORS middleware allows only for a request a browser marked as coming from
    elsewhere. ``allowed_hosts``: names a request arriving on a loopback address may carry
    besides loopback names (a proxy on the same machine that passes on its own Host)."""
    host = origin = site = None
    repeated = False
    for name, value in scope["headers"]:
        if name == _HOST:
            repeated = host is not None
            host = value
        elif name == _ORIGIN:
            origin = value
        elif name == _FETCH_SITE:
            site = value
    if repeated or host is None or not valid_host(host):
        why = host_refusal(host, repeated, scope.get("http_version", "1.1"))
        if why is not None:
            return 400, why
    why = _guard_refusal(scope, allowed_hosts, host, origin, site)
    return None if why is None else (403, why)


def _guard_refusal(
    scope: Scope,
    allowed_hosts: tuple[str, ...],
    host: bytes | None,
    origin: bytes | None,
    site: bytes | None,
) -> str | None:
    """Why the browser guard refuses the request (403), or None."""
    local = _loopback_arrival(scope)
    if host and local is not None and not _is_loopback_header(host):
        name = _hostname(host.decode("latin-1"))
        if not host_allowed(name, allowed_hosts):
            return (
                f"this request reached the server through the loopback address {local}, "
                "where it answers only to loopback names (localhost, 127.0.0.1, [::1]) and "
                f"its allowed_hosts, a guard against DNS rebinding: not to Host '{name}' (a "
                "proxy on this machine that passes on its own Host needs that name in "
                "allowed_hosts)"
            )
    trusted = origin is not None and _trusted_origin(origin, host, allowed_hosts)
    foreign_site = site is not None and site.lower() not in _OWN_SITES and not trusted
    foreign_origin = origin is not None and not trusted
    if not (foreign_site or foreign_origin):
        return None
    if scope["type"] == "websocket":
        # A page may read what a WebSocket of another site's server sends it (no CORS):
        # any route, not only control routes.
        return "WebSocket handshakes from a page of another site or origin are refused"
    family = family_in(scope)
    if family is RouteFamily.ADMIN:
        if foreign_site:
            return "control routes refuse requests a browser sends from another site"
        return "control routes refuse requests a browser sends from another origin"
    if family not in _GUARDED_FAMILIES:
        return None
    route = loadonce_route(scope)
    if route is None or (origin is not None and app_allows_origin(scope, origin, route.cors)):
        return None
    return _INFERENCE_REFUSAL.format(what="site" if foreign_site else "origin")


def _trusted_origin(origin: bytes, host: bytes | None, allowed_hosts: tuple[str, ...]) -> bool:
    """The request's own origin (the Host it was sent to), or one whose name the operator
    listed in ``allowed_hosts`` (``*`` aside, which opens Host names, not origins): behind a
    proxy that passes on its own Host, or drops the port, a page's own origin differs from
    the Host the server sees."""
    parts = urlsplit(origin.decode("latin-1"))
    netloc = parts.netloc.lower()
    if not netloc:
        return False  # "null", a sandboxed page's or a file's
    if netloc == (host or b"").decode("latin-1").lower():
        return True
    listed = tuple(pattern for pattern in allowed_hosts if pattern != "*")
    try:
        name = parts.hostname
    except ValueError:
        return False
    return name is not None and host_allowed(name, listed)


def _loopback_arrival(scope: Scope) -> str | None:
    """The loopback address the request's connection arrived on, or None."""
    server = scope.get("server")
    if server is None or not _is_loopback_address(server[0]):
        return None
    return str(server[0])


@functools.lru_cache(maxsize=64)
def _is_loopback_address(address: str) -> bool:
    return is_loopback_host(str(address))


@functools.lru_cache(maxsize=256)
def _is_loopback_header(host: bytes) -> bool:
    # Cached: every request carries one of a few Host values (a client varying it only
    # evicts entries).
    return is_loopback_host(_hostname(host.decode("latin-1")))
