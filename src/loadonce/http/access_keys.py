"""API keys per route family: which keys a server accepts, and which family a path is in.

Route families: health probes and the docs are always open; ``/metrics`` is open unless
protected; the statistics extension (``/v2/models/.../stats``, /metrics's figures per model)
needs what inference routes need, and a key too when the metrics are protected; admin routes
(loading, unloading, reloading models) need an admin key; every other route (inference, model
listings) needs an inference or an admin key. With no key configured at all, everything is
open, as before (the server binds 127.0.0.1 by default). Once any key is configured, admin
routes need an admin key, even when none is configured (then they are shut).

Keys are compared in constant time (``hmac.compare_digest`` against every key, no early exit)
and never logged or echoed.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from enum import Enum, StrEnum

from loadonce.core.errors import ConfigError

MIN_KEY_LENGTH = 16
_AUTHORIZATION = b"authorization"
_API_KEY = b"x-api-key"
_OPEN_PATHS = {
    "/livez",
    "/readyz",
    "/v2/health/live",
    "/v2/health/ready",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
}
# The files /docs loads (http/docs.py).
_OPEN_PREFIXES = ("/docs/assets/",)
_ADMIN_PATH = re.compile(r"^/(admin/.*|v2/repository/models/[^/]+/(load|unload))$")
# The Open Inference Protocol's statistics extension: /metrics's figures, per model.
_STATISTICS_PATH = re.compile(r"^/v2/models(/[^/]+(/versions/[^/]+)?)?/stats$")


class RouteFamily(StrEnum):
    OPEN = "open"
    METRICS = "metrics"
    ADMIN = "admin"
    INFERENCE = "inference"
    # An inference route showing what /metrics shows: protected as both.
    STATISTICS = "statistics"


def family_of(path: str) -> RouteFamily:
    """The family of a route path: the path without the app's root path (``route_path``),
    as the app's routes see it."""
    if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
        return RouteFamily.OPEN
    if path == "/metrics":
        return RouteFamily.METRICS
    if _ADMIN_PATH.match(path):
        return RouteFamily.ADMIN
    if _STATISTICS_PATH.match(path):
        return RouteFamily.STATISTICS
    # Anything else, known route or not, is treated as inference: deny by default.
    return RouteFamily.INFERENCE


@dataclass(frozen=True)
class AccessKeys:
    """The keys a server accepts. ``inference`` keys open inference routes; ``admin`` keys open
    admin routes and inference routes too."""

    inference: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()
    protect_metrics: bool = False

    def __post_init__(self) -> None:
        for key in (*self.inference, *self.admin):
            if len(key) < MIN_KEY_LENGTH or key != key.strip():
                raise ConfigError(
                    f"an API key must be at least {MIN_KEY_LENGTH} characters, without "
                    "surrounding spaces (one of the configured keys is not; it is not shown)"
                )
        if self.protect_metrics and not self.enabled:
            raise ConfigError("protect_metrics needs at least one API key")

    @property
    def enabled(self) -> bool:
        return bool(self.inference or self.admin)


def matches(candidate: bytes, keys: tuple[str, ...]) -> bool:
    found = False
    for key in keys:
        # Every key is compared, whatever matched before: the time does not tell which.
        found |= hmac.compare_digest(candidate, key.encode("utf-8"))
    return found


class TwoKeys(Enum):
    """A request that presented more than one key, and they differ (``presented_key``)."""

    SENT = "two keys"


TWO_KEYS = TwoKeys.SENT


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | TwoKeys | None:
    """``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; ``TWO_KEYS`` when the request
    presents two keys that differ (both headers, or one twice): the first was taken, so
    ``Authorization: Bearer <inference key>`` with ``X-API-Key: <admin key>`` was refused
    and the same two headers the other way round let in, and a proxy that reads the last
    header (or adds its own) judged another key than the one served."""
    found: bytes | None = None
    for name, value in headers:
        if name == _AUTHORIZATION:
            scheme, _, token = value.partition(b" ")
            key = token.strip() if scheme.lower() == b"bearer" else b""
        elif name == _API_KEY:
            key = value.strip()
        else:
            continue
        if not key:
            continue  # another scheme (Basic, for a proxy in front), or none: not a key
        if found is not None and not hmac.compare_digest(found, key):
            return TWO_KEYS
        found = key
    return found


# How a client sends its key, said when it sent none: as HTTP headers, or as gRPC metadata,
# whose keys must be lowercase (tritonclient.grpc refuses 'Authorization' before sending).
SEND_KEY_AS_HEADER = "send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
SEND_KEY_AS_METADATA = (
    "send it as the metadata 'authorization: Bearer <key>' or 'x-api-key: <key>' (lowercase)"
)


def refusal(
    keys: AccessKeys,
    family: RouteFamily,
    key: bytes | TwoKeys | None,
    *,
    how: str = SEND_KEY_AS_HEADER,
) -> tuple[int, str] | None:
    """Why a request of ``family`` presenting ``key`` is refused (401 or 403, and the message),
    None if it may go on: for every transport (HTTP here, gRPC's metadata too; ``how`` says
    how to send a key)."""
    if family is RouteFamily.OPEN or (family is RouteFamily.METRICS and not keys.protect_metrics):
        return None
    if family is RouteFamily.INFERENCE and not keys.inference:
        return None  # only admin keys configured: inference stays open
    if family is RouteFamily.STATISTICS and not (keys.inference or keys.protect_metrics):
        return None  # open as inference is, unless the metrics are protected
    if key is None:
        return 401, f"an API key is required: {how}"
    if key is TWO_KEYS:
        return 401, f"the request presents more than one API key: send one ({how})"
    is_admin = matches(key, keys.admin)
    is_inference = matches(key, keys.inference)
    if not (is_admin or is_inference):
        return 401, "the API key is not valid"
    if family is RouteFamily.ADMIN and not is_admin:
        return 403, "this API key may not use admin routes (load, unload, reload)"
    return None
