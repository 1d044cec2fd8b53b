"""Artifact integrity: sha256 of a file, and the check against a pin."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks so a large artifact is never held in memory."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class IntegrityError(Exception):
    """The artifact's bytes are not the ones pinned in the spec."""


def verify_sha256(path: Path, expected: str) -> None:
    if path.is_dir():  # a declared one: a request's is refused before (core/control.py)
        raise IntegrityError("sha256 pins one file's bytes, and the artifact is a directory")
    actual = file_sha256(path)
    if actual != expected.lower():
        raise IntegrityError(
            f"sha256 mismatch: the pin is {expected.lower()}, the file has {actual}"
        )
