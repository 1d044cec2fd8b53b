"""Artifact integrity: sha256 of a file, the check against a pin, and the check that the
file a load read did not change while it read it."""

from __future__ import annotations

import hashlib
import os
import stat
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


# What tells one state of a file's bytes from another without reading them: the inode (a
# rename over the path), the size, and the change time, which any write, truncation or
# rename of the file sets and no one can set back (unlike the modification time).
FileState = tuple[int, int, int, int, int]


class ArtifactChangedError(Exception):
    """The artifact's file changed on disk while its load read it (or, ``since``, after the
    load that this one must match)."""

    def __init__(self, since: str = "") -> None:
        if since:
            super().__init__(
                f"the artifact changed on disk since {since} loaded it (written, replaced, "
                "truncated or deleted), so the workers would serve different bytes as one "
                "version; load it again once it is complete"
            )
            return
        super().__init__(
            "the artifact changed on disk while it loaded (written, replaced, truncated or "
            "deleted meanwhile), so what loaded may be neither version, nor the bytes a sha256 "
            "pin was checked against; load it again once it is complete"
        )


def file_state(path: Path | None) -> FileState | None:
    """The state of the regular file at ``path`` (followed through links); None for no
    path, a directory (its files are the runtime's to read), or a path that is gone."""
    if path is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def check_unchanged(path: Path | None, before: FileState | None) -> None:
    """Raise ArtifactChangedError if the file at ``path`` is no longer in the state
    ``before`` (taken before the sha256 check and the load): a ``cp`` over it, a deploy
    renaming the next version in, a pinned file swapped after its hash was checked."""
    if before is not None and file_state(path) != before:
        raise ArtifactChangedError()
