"""The in-process bound: the model alone, on batches of 32 rows, in one thread.

`python -m bench.inprocess ARTIFACT ROW_JSON` prints {"rows_per_s": ...}.

`python -m bench.inprocess ARTIFACT ROW_JSON 32,63 [ROUNDS]` compares batch sizes: rounds of
1.5 s per size, the sizes taking turns, and prints the median rows/s of each. A forest's call
costs about the same for 32 rows as for 63 (its time is per tree, not per row), so the bound
on 32-row batches says little of the rate at the batches a loaded server runs
(docs/benchmarks.md).

`python -m bench.inprocess ARTIFACT ROW_JSON 32,56 [ROUNDS] --both` times the model's own
``predict`` against the call loadonce's scikit-learn runtime makes (a forest tree by tree,
``runtimes/sklearn_forests.py``), taking turns: {"model": {size: rows/s}, "loadonce": ...}.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import TRUSTED_TYPES, load


def _by_batch_size(
    calls: dict[str, Any], row: np.ndarray, sizes: list[int], rounds: int
) -> dict[str, dict[str, int]]:
    """{call's name: {batch size: median rows/s}}, the calls and sizes taking turns."""
    rates: dict[tuple[str, int], list[float]] = {(n, s): [] for n in calls for s in sizes}
    turns = list(rates)
    for round_ in range(rounds):
        for name, size in turns[round_ % len(turns) :] + turns[: round_ % len(turns)]:
            predict = calls[name]
            batch = np.tile(row, (size, 1))
            predict(batch)
            rows = 0
            started = time.perf_counter()
            while time.perf_counter() - started < 1.5:
                predict(batch)
                rows += size
            rates[name, size].append(rows / (time.perf_counter() - started))
    return {
        name: {str(size): round(statistics.median(rates[name, size])) for size in sizes}
        for name in calls
    }


def _through_loadonce(artifact: Path) -> Any:
    """The predict call loadonce's runtime makes for the artifact."""
    from loadonce.core.spec import ModelSpec
    from loadonce.runtimes import resolve_runtime

    spec = ModelSpec(name="m", artifact=artifact, options={"trusted_types": TRUSTED_TYPES})
    return resolve_runtime(spec).load(spec).predict


def main() -> None:
    model = load(Path(sys.argv[1]))
    row = np.asarray(json.loads(sys.argv[2]), dtype=np.float64)
    if len(sys.argv) > 3:
        sizes = [int(size) for size in sys.argv[3].split(",")]
        rounds = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4].isdigit() else 5
        calls = {"model": model.predict}  # type: ignore[attr-defined]
        if "--both" in sys.argv:
            calls["loadonce"] = _through_loadonce(Path(sys.argv[1]))
        rates = _by_batch_size(calls, row, sizes, rounds)
        print(json.dumps(rates if "--both" in sys.argv else rates["model"]))
        return
    batch = np.tile(row, (32, 1))
    predict = model.predict  # type: ignore[attr-defined]
    for _ in range(20):
        predict(batch)
    rows = 0
    started = time.perf_counter()
    while time.perf_counter() - started < 3.0:
        predict(batch)
        rows += len(batch)
    print(json.dumps({"rows_per_s": rows / (time.perf_counter() - started)}))


if __name__ == "__main__":
    main()
