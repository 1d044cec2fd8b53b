"""The comparison's markdown tables, from bench/results/compare.json's structure.

results = {
  "date", "cpu", "versions": {env: {package: version}}, "seconds",
  "models": {model: {"inprocess_rows_per_s": float,
                      "variants": {key: {"c64": [run, run], "c1": [run, run], "memory": {...}}}}},
  "overload": {...} (optional)
}
where a run is a WrkResult as a dict.
"""

from __future__ import annotations

from typing import Any

from bench.servers import SERVER_CORE, VARIANTS

_LABELS = {variant.key: variant.label for variant in VARIANTS}


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def run_cells(runs: list[dict[str, Any]]) -> list[str]:
    """req/s as 'first / second', then the better run's p50 and p99, and all errors."""
    rates = " / ".join(f"{run['req_per_s']:,.0f}" for run in runs)
    best = max(runs, key=lambda run: run["req_per_s"])
    errors = sum(run["errors"] for run in runs)
    return [rates, num(best["p50_ms"], 2), num(best["p99_ms"], 1), str(errors)]


def model_table(model: str, entry: dict[str, Any]) -> list[str]:
    bound = entry.get("inprocess_rows_per_s")
    measured = f"{bound:,.0f} rows/s on batches of 32, one thread" if bound else "not measured"
    lines = [
        f"**{model}** (in-process bound: {measured})",
        "",
        "| server | c64 req/s (run 1 / 2) | c64 p50 ms | c64 p99 ms | c64 errors "
        "| c1 req/s (run 1 / 2) | c1 p50 ms | c1 p99 ms | c1 errors | RSS MiB | PSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, measured in entry["variants"].items():
        cells = [_LABELS.get(key, key)]
        for connections in ("c64", "c1"):
            runs = measured.get(connections)
            cells += run_cells(runs) if runs else ["not run", "", "", ""]
        memory = measured.get("memory", {})
        cells += [num(memory.get("rss_mib"), 0), num(memory.get("pss_mib"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(results: dict[str, Any]) -> str:
    versions = "; ".join(
        f"{env}: " + ", ".join(f"{name} {version}" for name, version in packages.items())
        for env, packages in results["versions"].items()
    )
    lines = [
        f"Run of {results['date']} on {results['cpu']}; servers on core {SERVER_CORE}, wrk on "
        f"the other; {results['seconds']} s per measured run, after a warm-up.",
        f"Versions: {versions}.",
        "",
    ]
    for model, entry in results["models"].items():
        lines += [*model_table(model, entry), ""]
    overload = results.get("overload")
    if overload:
        lines.append(
            f"**overload** (forest, loadonce with batching, max_queue {overload['max_queue']}, "
            f"timeout_s {overload['timeout_ms'] / 1000:g}): offered "
            f"{overload['offered_rate']:,.0f} req/s open-loop for {overload['sent']:,} requests, "
            f"answered in {overload['seconds_taken']:.1f} s; statuses {overload['statuses']}; "
            f"200s: {overload['ok_per_s']:,.0f}/s, p50 / p99 from send "
            f"{overload['ok_p50_from_send_ms']:.1f} / "
            f"{overload['ok_p99_from_send_ms']:.1f} ms; server RSS start "
            f"{overload['rss_start_mib']:.0f} MiB, peak {overload['rss_peak_mib']:.0f} MiB, "
            f"end {overload['rss_end_mib']:.0f} MiB."
        )
    return "\n".join(lines) + "\n"
