"""PNG charts of a comparison: `python charts.py RESULTS_JSON OUT_DIR`, run by the charts
environment's interpreter (bench/.venvs/charts, with matplotlib). One chart per model:
requests per second at 64 connections (the better of the two runs, the other as a tick), and
p50 at 1 connection, per server, with the bounds as lines, not bars: the FastAPI route
answering a constant ("http", dashed) and the raw-HTTP floor ("raw", a raw ASGI app on the same
uvicorn; dash-dotted), and the model in-process (dotted). Drawn from the same results file as
bench/report.py's tables. A results file with "many_connections"
(bench/results/transformers.json: 16) is charted at that count instead."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLOURS = {
    "loadonce": "#1b7837",
    "fastapi": "#999999",
    "litserve": "#5e3c99",
    "mlserver": "#e66101",
    "bound": "#2166ac",
}
# The bounds drawn as vertical lines: key, colour, line style, legend entry.
BOUND_LINES = [
    ("http", COLOURS["bound"], "--", "FastAPI route, constant answer"),
    ("raw", "#222222", "-.", "raw ASGI floor (read, json.loads, constant)"),
]


def _family(key: str) -> str:
    if key in ("a", "b", "defaults"):
        return "loadonce"
    if key.startswith("litserve"):
        return "litserve"
    if key.startswith("mlserver"):
        return "mlserver"
    return "bound" if key in ("http", "raw") else "fastapi"


def _best_p50(runs: list[dict[str, Any]]) -> float:
    # A run in which no request finished prints a latency of 0: not a measure.
    measured = [run["p50_ms"] for run in runs if run["p50_ms"] is not None and run["req_per_s"]]
    return min(measured) if measured else 0.0


def chart(
    model: str, entry: dict[str, Any], labels: dict[str, str], out: Path, many: int = 64
) -> None:
    bounds = {key for key, *_ in BOUND_LINES}
    keys = [k for k in entry["variants"] if k not in bounds]
    best = [max(r["req_per_s"] for r in entry["variants"][k][f"c{many}"]) for k in keys]
    other = [min(r["req_per_s"] for r in entry["variants"][k][f"c{many}"]) for k in keys]
    p50 = [_best_p50(entry["variants"][k]["c1"]) for k in keys]
    colours = [COLOURS[_family(k)] for k in keys]
    names = [labels.get(k, k) for k in keys]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(keys) + 1.8))
    left.barh(names, best, color=colours)
    left.plot(other, names, "k|", markersize=12)
    drawn = [0.0]
    for key, colour, style, legend in BOUND_LINES:
        measured = entry["variants"].get(key, {}).get(f"c{many}")
        if measured:
            drawn.append(max(r["req_per_s"] for r in measured))
            left.axvline(drawn[-1], color=colour, linestyle=style, label=legend)
    widest = max([*best, *drawn])
    inprocess = entry.get("inprocess_rows_per_s") or 0.0
    if inprocess and inprocess > 2 * widest:
        # Off the scale (the tiny model): named in the title instead of squashing the bars.
        left.set_title(f"model in-process: {inprocess:,.0f} rows/s (off this scale)", fontsize=9)
    elif inprocess:
        left.axvline(
            entry["inprocess_rows_per_s"],
            color="#b2182b",
            linestyle=":",
            label=entry.get("inprocess_label", "model in-process (rows/s)"),
        )
    left.set_xlabel(f"requests/s, {many} connections (bar: better run, tick: other run)")
    left.invert_yaxis()
    left.legend(loc="lower right", fontsize=8)
    # A bar far past the others (the anti-pattern's) is cut at the axis and labelled.
    ordinary = sorted(p50)[len(p50) // 2] * 20 or 1.0
    right.barh(names, [min(value, ordinary) for value in p50], color=colours)
    for index, value in enumerate(p50):
        if value > ordinary:
            right.text(ordinary, index, f"{value:,.0f} ms ", va="center", ha="right", color="w")
    # Cut only where a bar is cut; otherwise fit the bars (3 short bars would be slivers).
    right.set_xlim(0, min(ordinary, 1.15 * max(p50)) or 1.0)
    right.set_xlabel("p50 latency ms, 1 connection (better run)")
    right.set_yticks([])
    right.invert_yaxis()
    figure.suptitle(f"{model}: one example per request, server on one core")
    figure.tight_layout()
    figure.savefig(out / f"bench-{model}.png", dpi=110)
    plt.close(figure)


def main() -> None:
    results = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    labels = results.get("labels", {})
    for model, entry in results["models"].items():
        chart(model, entry, labels, out, results.get("many_connections", 64))


if __name__ == "__main__":
    main()
