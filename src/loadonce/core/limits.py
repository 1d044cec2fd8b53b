"""Request size limits: the body (``http/body_limit.py`` refuses it before it is read, when
its length is declared), one BYTES element of an Open Inference Protocol tensor, and the bytes
of every request body a worker holds at once (``core/body_budget.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from loadonce.core.errors import RequestTooLargeError

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """``None`` means no limit. ``max_body_bytes_in_flight``: what every request in flight
    may hold together, their bodies as received and as decompressed (a body over it alone,
    within ``max_body_bytes``, is still read when no other is held)."""

    max_body_bytes: int | None = 64 * MIB
    max_element_bytes: int | None = 16 * MIB
    max_body_bytes_in_flight: int | None = 1024 * MIB


def body_too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the request body is larger than {limit} bytes, this server's max_body_bytes"
    )
