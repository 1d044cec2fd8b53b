"""Request size limits: the body (``http/body_limit.py`` refuses it before it is read, when
its length is declared), and one BYTES element of an Open Inference Protocol tensor."""

from __future__ import annotations

from dataclasses import dataclass

from loadonce.core.errors import RequestTooLargeError

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """``None`` means no limit."""

    max_body_bytes: int | None = 64 * MIB
    max_element_bytes: int | None = 16 * MIB


def body_too_large(limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"the request body is larger than {limit} bytes, this server's max_body_bytes"
    )
