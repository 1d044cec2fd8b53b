"""The in-process bound: the model alone, on batches of 32 rows, in one thread.

`python -m bench.inprocess ARTIFACT ROW_JSON` prints {"rows_per_s": ...}.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.models import load


def main() -> None:
    model = load(Path(sys.argv[1]))
    row = np.asarray(json.loads(sys.argv[2]), dtype=np.float64)
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
