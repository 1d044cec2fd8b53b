"""The shared-memory extensions' tensor parameters, which loadonce does not serve.

A client of Triton's system or CUDA shared memory names a region in an input's or a requested
output's parameters instead of sending the data: an input then has no data here (it was
refused as "has no data", which sent its client looking for a mistake of its own), and an
output's region was never written while the answer carried the data (its client read its
buffer, unchanged). Either is refused by name, on REST and gRPC alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loadonce.core.errors import InvalidInputError

# The parameters Triton's shared-memory extensions put on a tensor.
_SHARED_MEMORY_PARAMETERS = (
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
)


class SharedMemoryError(InvalidInputError):
    """A tensor names a shared-memory region (HTTP 400, gRPC INVALID_ARGUMENT)."""

    def client_message(self) -> str:
        return str(self)  # about the tensor's transport, not its values


def refuse_shared_memory(kind: str, name: str, parameters: Mapping[str, Any] | None) -> None:
    """A 400 for an input or a requested output (``kind``) whose parameters name a
    shared-memory region."""
    if not parameters:  # most tensors: every request's path
        return
    named = [key for key in _SHARED_MEMORY_PARAMETERS if key in parameters]
    if named:
        raise SharedMemoryError(
            f"{kind} '{name}' has parameters.{named[0]}: shared memory is not supported by "
            "this server; send the tensor's data in the request (JSON or binary) instead"
        )
