"""Whether a host is this machine's own: for the browser guard, and for the warning the
server gives when it listens beyond it (a module that imports no web framework: the
supervisor of ``--workers N`` binds the port and warns)."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """``localhost``, a name under ``.localhost``, or a loopback address (IPv4 or IPv6)."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
