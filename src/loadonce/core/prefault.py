"""Prefault: map a model's mapped weights into memory before its worker reports it ready.

A mapped artifact (safetensors, an uncompressed joblib's arrays) is read page by page the
first time a request touches it, so each worker's first requests paid for reading the
weights (about 1 s for 1 GB). Prefaulting asks the kernel, at load, to fill this process's
mappings of the artifact: from the page cache when another worker read the file already,
from disk once otherwise. Only the artifact's own mappings are touched, so what it costs is
at most the artifact's size (shared with every worker through the page cache), and a model
whose weights were copied (nothing of its artifact mapped) costs nothing.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import mmap
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from loadonce.core.memory import artifact_bytes

logger = logging.getLogger("loadonce")

# madvise(2) advice values (asm-generic/mman-common.h); Python's mmap module does not name
# MADV_POPULATE_READ. POPULATE_READ (Linux 5.14) faults every page in, as reads would, and
# returns an error instead of raising SIGBUS past the file's end; WILLNEED (any Linux) only
# starts reading the file into the page cache, so the first touches still fault, but
# without waiting for the disk.
_MADV_WILLNEED = 3
_MADV_POPULATE_READ = 22
_PROC_MAPS = Path("/proc/self/maps")


@dataclass(frozen=True)
class Prefaulted:
    """What a prefault did: the bytes of the artifact's mappings, the seconds it took, and
    how (``populated``: the pages are mapped now; ``read ahead``: only in the page cache,
    the kernel being older than 5.14)."""

    bytes: int
    seconds: float
    how: str


def prefault_weights(name: str, artifact: Path | None, asked: bool | None) -> Prefaulted | None:
    """Prefault this process's mappings of ``artifact`` (a file, or a directory's files), for
    the model ``name`` whose predictor maps its weights. ``asked``: the spec's ``prefault``;
    None decides by size: on when the artifact fits in the memory available now, else off
    (one log line), since reading it all would only push other pages out. None when nothing
    was done (off, not Linux, nothing of the artifact mapped)."""
    if asked is False or artifact is None or not sys.platform.startswith("linux"):
        return None
    if asked is None:
        size = artifact_bytes(artifact) or 0
        available = int(psutil.virtual_memory().available)
        if size > available:
            logger.info(
                "model '%s': prefault off: its artifact (%.1f MiB) is larger than the memory "
                "available now (%.1f MiB), so its weights are read as requests first use them "
                "(prefault = true reads them at load anyway)",
                name,
                size / 2**20,
                available / 2**20,
            )
            return None
    return prefault_mapped(artifact)


def prefault_mapped(artifact: Path) -> Prefaulted | None:
    """Fault in every page of this process's readable mappings of ``artifact`` that lies
    within its file; None when nothing of it is mapped."""
    regions = list(_mapped_regions(artifact))
    if not regions:
        return None
    started = time.perf_counter()
    advice = _MADV_POPULATE_READ
    for start, length in regions:
        if _madvise(start, length, advice) == errno.EINVAL and advice == _MADV_POPULATE_READ:
            # A kernel older than 5.14 does not know the advice: read ahead instead.
            advice = _MADV_WILLNEED
            _madvise(start, length, advice)
        # Any other error leaves the region to be read on first use, as without prefault:
        # the mapping went away meanwhile (ENOMEM), or a page could not be read (EFAULT, a
        # file truncated after it was mapped); the model's own reads meet the same fault.
    return Prefaulted(
        bytes=sum(length for _, length in regions),
        seconds=time.perf_counter() - started,
        how="populated" if advice == _MADV_POPULATE_READ else "read ahead",
    )


def _mapped_regions(artifact: Path) -> Iterator[tuple[int, int]]:
    """(start address, length) of each readable mapping of the artifact's files in this
    process, cut at the file's end (pages past it cannot be read)."""
    root = os.path.realpath(artifact)
    try:
        maps = _PROC_MAPS.open()
    except OSError:
        return
    with maps:
        yield from _regions_of(maps, root)


def _regions_of(maps: Iterable[str], root: str) -> Iterator[tuple[int, int]]:
    sizes: dict[str, int] = {}
    for line in maps:
        # "start-end perms offset dev inode path"; a path may hold spaces.
        fields = line.rstrip("\n").split(maxsplit=5)
        if len(fields) < 6 or "r" not in fields[1]:
            continue
        path = fields[5]
        if path != root and not path.startswith(root + os.sep):
            continue
        if path not in sizes:
            try:
                sizes[path] = os.stat(path).st_size
            except OSError:
                continue
        begin, end = (int(address, 16) for address in fields[0].split("-"))
        within_file = sizes[path] - int(fields[2], 16)
        length = min(end - begin, _whole_pages(within_file))
        if length > 0:
            yield begin, length


def _whole_pages(count: int) -> int:
    return -(-count // mmap.PAGESIZE) * mmap.PAGESIZE


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    libc.madvise.restype = ctypes.c_int
    return libc


def _madvise(start: int, length: int, advice: int) -> int:
    """madvise(2); 0, or the errno it failed with. ctypes releases the GIL for the call."""
    if _libc().madvise(start, length, advice) == 0:
        return 0
    return ctypes.get_errno()
