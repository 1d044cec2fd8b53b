"""The host names an operator lets a loopback server answer to (``allowed_hosts``) besides
loopback names: how a pattern is written, checked once when given, and matched against the
name in a request's ``Host`` (http/browser_guard.py)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from loadonce.core.errors import ConfigError

# What allowed_hosts may hold: *, a name or *.name (labels between dots, a trailing dot
# allowed), or an IPv6 address (a Host header's name is read without its brackets).
_HOST_PATTERN = re.compile(
    r"\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?|[0-9A-Fa-f.]*(:[0-9A-Fa-f.]*){2,}"
)


def check_allowed_hosts(hosts: Iterable[str]) -> tuple[str, ...]:
    """``hosts`` as given, each checked to be a pattern that can match a Host header's name:
    "", "http://api.example.com" or "api.example.com:8080" never could, and were taken
    silently (the proxy's every request then refused)."""
    checked = tuple(hosts)
    for host in checked:
        if not isinstance(host, str) or not _HOST_PATTERN.fullmatch(host):
            raise ConfigError(
                f"allowed_hosts: {host!r} is not a host name: give a name (api.example.com), "
                "*.example.com for its subdomains, or * for any; no scheme, port or path"
            )
    return checked


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether the operator listed ``host``: a name, ``*.example.com`` for its subdomains,
    or ``*`` for any."""
    host = host.rstrip(".").lower()
    for pattern in allowed:
        pattern = pattern.rstrip(".").lower()  # "example.com." is the same name
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False
