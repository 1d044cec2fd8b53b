"""An inference request's body: decompressed, then split into its JSON and its binary tensors.

The binary tensor data extension (Triton's, followed by tritonclient): the header
``Inference-Header-Content-Length`` gives the size of the JSON at the start of the body; the
rest holds the raw elements of each input whose ``parameters.binary_data_size`` is set, one
after the other, in the order of the inputs.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from loadonce.core.errors import InvalidInputError, RequestTooLargeError

HEADER_LENGTH = "Inference-Header-Content-Length"
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode("latin-1")
_ENCODING_KEY = b"content-encoding"
# A compressed body may not grow past this (or the server's max_body_bytes) when decompressed:
# a few kilobytes of zeros would otherwise inflate to fill the worker's memory.
MAX_DECOMPRESSED_BYTES = 512 * 1024 * 1024


class UnsupportedEncodingError(InvalidInputError):
    """The body is compressed in a way this server does not read (HTTP 415)."""

    status = 415

    def client_message(self) -> str:
        return str(self)


@dataclass(frozen=True)
class SplitBody:
    json: bytes
    binary: memoryview  # empty when the request holds JSON only
    has_binary_header: bool


def split_body(
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    max_decompressed: int | None = None,
) -> SplitBody:
    """Decompress (gzip, deflate) and split the body at Inference-Header-Content-Length."""
    header_length: bytes | None = None
    encoding = b""
    for key, value in headers:
        if key == _HEADER_LENGTH_KEY:
            header_length = value
        elif key == _ENCODING_KEY:
            encoding = value.strip().lower()
    body = _decompress(body, encoding, max_decompressed or MAX_DECOMPRESSED_BYTES)
    if header_length is None:
        return SplitBody(json=body, binary=memoryview(b""), has_binary_header=False)
    # Digits only: int() would also take "10_8", "+10" or " 10".
    length = int(header_length) if header_length.isdigit() and len(header_length) < 19 else -1
    if length < 0:
        raise InvalidInputError(
            f"{HEADER_LENGTH} must be the size of the JSON part in bytes (a non-negative "
            f"integer); got {header_length.decode('latin-1')!r}"
        )
    if length > len(body):
        raise InvalidInputError(
            f"{HEADER_LENGTH} is {length}, but the body holds only {len(body)} bytes"
        )
    view = memoryview(body)
    return SplitBody(json=bytes(view[:length]), binary=view[length:], has_binary_header=True)


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
    parts: list[bytes] = []
    left, remaining = limit, body
    # gzip allows several members one after the other (RFC 1952): each is read, none dropped,
    # and the limit counts them all.
    while True:
        inflater = zlib.decompressobj(wbits)
        try:
            parts.append(inflater.decompress(remaining, left + 1))
        except zlib.error as exc:
            raise InvalidInputError(
                f"the body is not valid {encoding.decode('latin-1')} data: {exc}"
            ) from None
        left -= len(parts[-1])
        if left < 0 or inflater.unconsumed_tail:
            raise RequestTooLargeError(
                f"the body decompresses to more than {limit} bytes, this server's max_body_bytes"
            )
        if not inflater.eof:
            raise InvalidInputError(f"the {encoding.decode('latin-1')} body is truncated")
        remaining = inflater.unused_data
        if not remaining:
            return b"".join(parts)
        if wbits == zlib.MAX_WBITS:
            raise InvalidInputError("the deflate body has data after its end")
