"""The in-process bound: the model alone, on batches of 32 rows, in one thread.

`python -m bench.inprocess ARTIFACT ROW_JSON` prints {"rows_per_s": ...}.

`python -m bench.inprocess ARTIFACT ROW_JSON 32,63 [ROUNDS]` compares batch sizes: rounds of
1.5 s per size, the sizes taking turns, and prints the median rows/s of each. A forest's call
costs about the same for 32 rows as for 63 (its time is per tree, not per row), so the bound
on 32-row batches says little of the rate at the batches a loaded server runs
(docs/benchmarks.md).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.models import load


def _by_batch_size(predict: Any, row: np.ndarray, sizes: list[int], rounds: int) -> None:
    rates: dict[int, list[float]] = {size: [] for size in sizes}
    for round_ in range(rounds):
        for size in sizes[round_ % len(sizes) :] + sizes[: round_ % len(sizes)]:
            batch = np.tile(row, (size, 1))
            predict(batch)
            rows = 0
            started = time.perf_counter()
            while time.perf_counter() - started < 1.5:
                predict(batch)
                rows += size
            rates[size].append(rows / (time.perf_counter() - started))
    print(json.dumps({str(size): round(statistics.median(r)) for size, r in rates.items()}))


def main() -> None:
    model = load(Path(sys.argv[1]))
    row = np.asarray(json.loads(sys.argv[2]), dtype=np.float64)
    if len(sys.argv) > 3:
        sizes = [int(size) for size in sys.argv[3].split(",")]
        rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
        _by_batch_size(model.predict, row, sizes, rounds)  # type: ignore[attr-defined]
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
