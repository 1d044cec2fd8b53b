"""glibc's allocator told to give a worker's large freed blocks back to the system.

glibc maps a block at or above its mmap threshold and unmaps it when it is freed; a smaller
block comes from a heap and stays there, resident, once freed. The threshold starts at
128 KiB and rises to the size of each mapped block freed (up to 32 MiB), so once a model's
first call has freed its large temporaries (a brute-force neighbours search: a 25 MiB
distance array per query row), later ones of that size come from a heap of the model's thread
and stay resident between calls: each worker kept 25-50 MiB it no longer used (measured,
docs/benchmarks.md). A fixed threshold keeps large blocks mapped, so freeing them gives them
back; a heap keeps up to twice the threshold free at its top (glibc's own ratio), so that
smaller blocks are reused instead of going back to the system at every call. The default
(16 MiB, ``ServerOptions.malloc_mmap_threshold``) leaves blocks below it to the heaps, as
glibc's default does once it has seen them: mapping a block anew costs a page fault per 4 KiB
at every call, and at 4 MiB (a PyTorch MLP's 8 MiB activations mapped anew) its calls were
12-17% slower (``python -m bench.allocator``).
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger("loadonce")

# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's own variables for the same settings: an operator who set one chose, and is obeyed.
GLIBC_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
# The largest threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2).
MOST_THRESHOLD_BYTES = 32 * 1024 * 1024


def map_large_blocks(threshold: int) -> bool:
    """Blocks of ``threshold`` bytes or more mapped, and unmapped when freed, in this process
    from now on. Nothing is done (False) for 0, when glibc's own variables are set, or when
    the C library is not glibc (musl, macOS: their allocators differ)."""
    if threshold <= 0 or any(variable in os.environ for variable in GLIBC_VARIABLES):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    trim = 2 * threshold  # at most 64 MiB: ServerOptions caps the threshold at 32
    if mallopt(_M_MMAP_THRESHOLD, threshold) == 1 and mallopt(_M_TRIM_THRESHOLD, trim) == 1:
        return True
    logger.warning("glibc refused an mmap threshold of %d bytes; its default is kept", threshold)
    return False
