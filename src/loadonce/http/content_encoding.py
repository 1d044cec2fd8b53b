"""A request body's Content-Encoding: gzip and deflate read, within a limit; anything else
refused with 415. One reader for every route that takes a body of JSON or tensors."""

from __future__ import annotations

import zlib

from loadonce.core.errors import InvalidInputError, RequestTooLargeError

_ENCODING_KEY = b"content-encoding"
# A compressed body may not grow past this (or the server's max_body_bytes) when decompressed:
# a few kilobytes of zeros would otherwise inflate to fill the worker's memory.
MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024


class UnsupportedEncodingError(InvalidInputError):
    """The body is compressed in a way this server does not read (HTTP 415)."""

    status = 415

    def client_message(self) -> str:
        return str(self)


def is_encoded(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the body says it is compressed (it is then read in a thread: a few bytes may
    inflate to the body limit)."""
    return any(
        key == _ENCODING_KEY and value.strip().lower() not in (b"", b"identity")
        for key, value in headers
    )


def decoded_body(
    body: bytes, headers: list[tuple[bytes, bytes]], limit: int | None = None
) -> bytes:
    """The body as sent before its Content-Encoding (gzip, deflate; several gzip members in
    turn), never past ``limit`` bytes (default MAX_DECOMPRESSED_BYTES)."""
    encoding = b""
    for key, value in headers:
        if key == _ENCODING_KEY:
            encoding = value.strip().lower()
    return _decompress(body, encoding, limit or MAX_DECOMPRESSED_BYTES)


def _decompress(body: bytes, encoding: bytes, limit: int) -> bytes:
    if encoding in (b"", b"identity"):
        return body
    if encoding == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise UnsupportedEncodingError(
            f"Content-Encoding {encoding.decode('latin-1')!r} is not supported; send the body "
            "uncompressed, gzip or deflate"
        )
    name = encoding.decode("latin-1")
    parts: list[bytes] = []
    left = limit
    view = memoryview(body)
    position = 0
    pending: bytes | memoryview = b""  # what the last member left for the next one
    inflater = zlib.decompressobj(wbits)
    # gzip allows several members one after the other (RFC 1952): each is read, none dropped,
    # and the limit counts them all. The body is fed a slice at a time: zlib copies what
    # follows a member's end (``unused_data``), and with the whole body fed at once a body
    # of many empty members was copied once per member (4 MiB: 30 s of CPU).
    while True:
        if pending:
            data, pending = pending, b""
        elif position < len(view):
            data = view[position : position + _FEED_BYTES]
            position += len(data)
        else:
            raise InvalidInputError(f"the {name} body is truncated")
        try:
            parts.append(inflater.decompress(data, left + 1))
        except zlib.error as exc:
            raise InvalidInputError(f"the body is not valid {name} data: {exc}") from None
        left -= len(parts[-1])
        if left < 0 or inflater.unconsumed_tail:
            raise RequestTooLargeError(
                f"the body decompresses to more than {limit} bytes, this server's max_body_bytes"
            )
        if not inflater.eof:
            continue
        pending = inflater.unused_data
        if not pending and position >= len(view):
            return b"".join(parts)
        if wbits == zlib.MAX_WBITS:
            raise InvalidInputError("the deflate body has data after its end")
        inflater = zlib.decompressobj(wbits)


# How much of a compressed body is given to zlib at a time.
_FEED_BYTES = 64 * 1024
