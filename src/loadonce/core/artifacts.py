"""Which artifacts a control request (reload, repository load) may name.

Trust and pins come from the operator, never from a request. A request that names a new
artifact is checked here before the file is opened:

- the path, with every symbolic link resolved, lies under one of the operator's
  ``artifact_roots`` (by default the directories of the artifacts the operator configured);
- it is a regular file or a directory (a device such as ``/dev/zero``, a pipe or a socket
  would never finish hashing or loading), and a file is at most ``max_bytes`` long;
- its format does not run code when loaded (a pickle), unless the operator set
  ``trust = true`` for that model: a sha256 sent with the request checks the file's bytes,
  it is not the operator's consent.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from loadonce.core.errors import ForbiddenError, InvalidInputError
from loadonce.core.spec import ModelSpec

# The largest file a control request may name (a directory's files are read by its load,
# under load_timeout_s).
DEFAULT_MAX_ARTIFACT_BYTES = 64 * 2**30


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class ArtifactRoots:
    """The directories under which a control request may name an artifact."""

    roots: tuple[Path, ...]
    max_bytes: int | None = DEFAULT_MAX_ARTIFACT_BYTES

    @classmethod
    def of(
        cls,
        specs: Iterable[ModelSpec],
        roots: Iterable[Path] | None = None,
        *,
        max_bytes: int | None = DEFAULT_MAX_ARTIFACT_BYTES,
    ) -> ArtifactRoots:
        """The operator's ``roots``, or else the directories of the configured artifacts."""
        if roots is None:
            roots = [spec.artifact.parent for spec in specs if spec.artifact is not None]
        return cls(tuple(dict.fromkeys(_real(Path(root)) for root in roots)), max_bytes)

    def check(self, artifact: Path) -> Path:
        """The artifact's real path, if a request may name it; else a 403 or a 400."""
        if not artifact.is_absolute():
            raise InvalidInputError(f"artifact must be an absolute path; got '{artifact}'")
        if "\0" in str(artifact):
            raise InvalidInputError("artifact must be a path: it holds a NUL character")
        real = _real(artifact)
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(root) for root in self.roots) or "none (no artifact configured)"
            raise ForbiddenError(
                f"artifact '{artifact}' is outside this server's artifact_roots ({allowed}); "
                "a control request may only name artifacts under them"
            )
        try:
            info = real.stat()
        except OSError as exc:
            raise InvalidInputError(
                f"artifact '{artifact}' cannot be read: {exc.strerror}"
            ) from None
        if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
            raise InvalidInputError(
                f"artifact '{artifact}' is not a regular file or a model directory"
            )
        if stat.S_ISREG(info.st_mode) and self.max_bytes and info.st_size > self.max_bytes:
            raise InvalidInputError(
                f"artifact '{artifact}' is {info.st_size} bytes, over this server's "
                f"max_artifact_bytes ({self.max_bytes})"
            )
        return real


def refuse_code_running_format(spec: ModelSpec, runs_code: bool) -> None:
    """A request may not make a model load a format that runs code, unless the operator
    trusts that model (``trust = true``)."""
    if runs_code and not spec.trust:
        raise ForbiddenError(
            f"artifact '{spec.artifact}' is in a format that runs code when loaded (a pickle); "
            f"model '{spec.name}' may load one on request only with trust = true in the "
            "operator's configuration (a sha256 in the request checks the bytes, it does not "
            "grant trust)"
        )
