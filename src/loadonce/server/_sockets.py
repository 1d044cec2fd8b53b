"""Binding the server's port before any model loads, without listening yet."""

from __future__ import annotations

import socket

from loadonce._errors import LoadonceError


class BindError(LoadonceError):
    """The address cannot be bound (in use, not local, no permission)."""


def bind_without_listening(host: str, port: int) -> socket.socket:
    """Bind now, so a taken port fails in milliseconds instead of after a long load; do not
    listen, so that until a worker's models are loaded a client is refused, not queued."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def describe_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
