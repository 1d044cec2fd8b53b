"""A request's ``Host`` field, checked as RFC 9112 (3.2) says: a 400 for an HTTP/1.1 request
without one, for more than one, and for one whose value is not a host and port.

Two Host lines were answered as if only one was there (the browser guard read the last, the
app's ``request.url`` the first: a page could pass the guard with a loopback name in one and
its own in the other), and a Host of ``a, b`` or ``u@host`` was a 403 naming a foreign host.
"""

from __future__ import annotations

import functools
import re

# uri-host [":" port] (RFC 3986): an IP literal in brackets, or a reg-name / IPv4 address,
# less the comma, which is how a proxy joins two Host lines into one. Empty is valid (a
# target URI with no authority).
_HOST_VALUE = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(:[0-9]*)?")


def host_refusal(host: bytes | None, repeated: bool, http_version: str) -> str | None:
    """Why the request's Host makes it a 400, or None. ``host``: its (last) value, None when
    it had none; ``repeated``: whether it had more than one. (The usual request, one valid
    Host, need not call it: ``valid_host`` says so.)"""
    if repeated:
        return "the request has more than one Host header"
    if host is None:
        if http_version == "1.1":
            return "the request has no Host header, which HTTP/1.1 requires"
        return None
    if not valid_host(host):
        shown = host.decode("latin-1")[:100]
        return f"the request's Host header {shown!r} is not a host[:port]"
    return None


@functools.lru_cache(maxsize=256)
def valid_host(host: bytes) -> bool:
    """Whether a Host value is host[:port]. Cached: every request carries one of a few."""
    return _HOST_VALUE.fullmatch(host) is not None
