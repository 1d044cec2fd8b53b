"""An inference request's body (inflated already) split into its JSON and its binary tensors.

The binary tensor data extension (Triton's, followed by tritonclient): the header
``Inference-Header-Content-Length`` gives the size of the JSON at the start of the body; the
rest holds the raw elements of each input whose ``parameters.binary_data_size`` is set, one
after the other, in the order of the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from loadonce.core.errors import InvalidInputError

HEADER_LENGTH = "Inference-Header-Content-Length"
_HEADER_LENGTH_KEY = HEADER_LENGTH.lower().encode("latin-1")


@dataclass(frozen=True)
class SplitBody:
    json: bytes
    binary: memoryview  # empty when the request holds JSON only
    has_binary_header: bool


def split_body(
    body: bytes,
    headers: list[tuple[bytes, bytes]],
) -> SplitBody:
    """Split the body (inflated already, ``parse_request_body``) at
    Inference-Header-Content-Length."""
    header_length: bytes | None = None
    for key, value in headers:
        if key == _HEADER_LENGTH_KEY:
            if header_length is not None and value != header_length:
                # Which one says where the JSON ends? The last one was taken silently, where a
                # proxy may have read the first.
                raise InvalidInputError(
                    f"{HEADER_LENGTH} is given twice, {header_length.decode('latin-1')!r} and "
                    f"{value.decode('latin-1')!r}: send it once"
                )
            header_length = value
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
