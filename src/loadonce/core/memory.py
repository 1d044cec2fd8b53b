"""Measuring what a model's load cost this process: RSS, USS and PSS, read with psutil."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True, kw_only=True)
class MemorySample:
    """Resident set size and unique set size of this process, in bytes.

    USS is the memory only this process holds; it is what a second worker adds. RSS also counts
    pages shared with other processes (libraries, page cache of mapped files); PSS counts each
    shared page divided by the number of processes sharing it.
    """

    rss: int
    uss: int
    pss: int = 0

    def __sub__(self, other: MemorySample) -> MemorySample:
        return MemorySample(
            rss=self.rss - other.rss, uss=self.uss - other.uss, pss=self.pss - other.pss
        )


def sample_process_memory() -> MemorySample:
    # memory_full_info reads /proc/PID/smaps on Linux to compute USS; it takes milliseconds,
    # so it is called around loads, never on the request path.
    info = psutil.Process().memory_full_info()
    # pss exists on Linux only.
    return MemorySample(rss=int(info.rss), uss=int(info.uss), pss=int(getattr(info, "pss", 0)))


def mapped_file_bytes(artifact: Path | None) -> tuple[int, int]:
    """This process's mappings of the artifact (a file, or the files of a directory): their
    resident bytes (pages of the page cache, shared with every process that maps them) and
    their whole size (pages are read on first use)."""
    if artifact is None:
        return 0, 0
    root = os.path.realpath(artifact)
    mappings = [
        mapping
        for mapping in psutil.Process().memory_maps(grouped=True)
        if mapping.path == root or mapping.path.startswith(root + os.sep)
    ]
    return sum(int(m.rss) for m in mappings), sum(int(m.size) for m in mappings)


def artifact_bytes(artifact: Path | None) -> int | None:
    """The artifact's size on disk (a directory's files summed); None if unreadable."""
    if artifact is None:
        return None
    try:
        if artifact.is_dir():
            return sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file())
        return artifact.stat().st_size
    except OSError:
        return None


def format_bytes(count: int) -> str:
    sign = "-" if count < 0 else "+"
    return f"{sign}{abs(count) / (1 << 20):.1f} MiB"
