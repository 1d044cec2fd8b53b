"""`loadonce` with the garbage collector's pauses timed: how long the event loop stood still.

    BENCH_GC_STATS=FILE python -m bench.gc_pauses serve CONFIG --port N

Runs the `loadonce` command line as `python -m loadonce` would, in this process, with a
``gc.callbacks`` hook. Pauses count from the SIGUSR1 the benchmark sends once the server is up
(so startup's own collections are left out); at exit the figures per generation (collections,
total seconds, longest pause) go to FILE as JSON. One worker only: the hook lives in this
process.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

_started_at = 0.0
_counting = False
_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    global _started_at
    if phase == "start":
        _started_at = time.perf_counter()
    elif _counting:
        _pauses[info["generation"]].append(time.perf_counter() - _started_at)


def _start_counting(signum: int, frame: FrameType | None) -> None:
    global _counting
    _counting = True


def _write(path: Path) -> None:
    figures = {
        str(generation): {
            "collections": len(pauses),
            "seconds": sum(pauses),
            "longest_ms": max(pauses, default=0.0) * 1000,
        }
        for generation, pauses in _pauses.items()
    }
    figures["frozen_objects_at_exit"] = {"count": gc.get_freeze_count()}
    path.write_text(json.dumps(figures))


def main() -> None:
    gc.callbacks.append(_on_collection)
    # A young threshold of the process's own (loadonce keeps it): bench.gc_freeze's variant.
    if young := os.environ.get("BENCH_GC_YOUNG_THRESHOLD"):
        gc.set_threshold(int(young), *gc.get_threshold()[1:])
    signal.signal(signal.SIGUSR1, _start_counting)
    atexit.register(_write, Path(os.environ["BENCH_GC_STATS"]))
    sys.argv = ["loadonce", *sys.argv[1:]]
    from loadonce.server.cli import main as loadonce_main

    loadonce_main()


if __name__ == "__main__":
    main()
