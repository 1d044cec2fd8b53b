"""Binding the server's port before any model loads, without listening yet."""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from loadonce.core.errors import LoadonceError
from loadonce.http.access_keys import AccessKeys
from loadonce.http.loopback import is_loopback_host

logger = logging.getLogger("loadonce")


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


def check_grpc_port(host: str, port: int) -> None:
    """Fail now, before any model loads, if another process holds the gRPC port. Workers bind
    it later (once loaded), each with SO_REUSEPORT so that they share it: a port taken then
    failed after the whole load, and with several workers each replacement failed in turn
    (a restart loop); and another server that binds with SO_REUSEPORT too (a second loadonce)
    shared it silently, the kernel splitting calls between the two. A bind without
    SO_REUSEPORT fails on a port any socket listens on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BindError(
                f"cannot bind {host}:{port} for gRPC (grpc_port): {exc.strerror or exc}"
            ) from None


def describe_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def warn_if_open_to_the_network(
    sock: socket.socket, access: AccessKeys, allowed_hosts: Sequence[str]
) -> None:
    """When the server listens beyond this machine: a loud warning without any API key (then
    anyone who can reach the port can reload, load and unload models); and, without
    ``allowed_hosts``, a line saying that requests arriving through a loopback address still
    need a loopback Host (http/browser_guard.py): the operator of a proxy or sidecar on the
    same machine learns it before its first 403."""
    host = str(sock.getsockname()[0])
    if is_loopback_host(host):
        return
    if not allowed_hosts:
        logger.info(
            "listening on %s: a request arriving through a loopback address (a proxy or "
            "sidecar on this machine connecting to 127.0.0.1) is answered only if its Host is "
            "a loopback name or in allowed_hosts (LOADONCE_ALLOWED_HOSTS), a guard against "
            "DNS rebinding; requests to this machine's other addresses are not concerned",
            describe_address(sock),
        )
    if access.enabled:
        return
    logger.warning(
        "SECURITY: listening on %s without API keys: anyone who can reach this port can load, "
        "unload and reload models. Set LOADONCE_ADMIN_API_KEYS (and LOADONCE_API_KEYS for "
        "inference), or bind 127.0.0.1 behind a proxy that authenticates",
        describe_address(sock),
    )
