"""The comparison's markdown tables, from bench/results/compare.json's structure, each followed
by its model's ratios against their targets.

results = {
  "date", "cpu", "versions": {env: {package: version}}, "seconds",
  "models": {model: {"inprocess_rows_per_s": float,
                      "variants": {key: {"c64": [run, run], "c1": [run, run], "memory": {...}}}}},
  "overload": {...} (optional)
}
where a run is a WrkResult as a dict. The bounds ("http", "raw": the raw-HTTP floor) are rows of
the table like the servers. The ratios (`ratios`) use the figures the table shows: a variant's
better c64 run, and the c1 p50 of its better c1 run; a variant not run (a --only run) makes its
ratios "n/a".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.servers import SERVER_CORE, VARIANTS

_LABELS = {variant.key: variant.label for variant in VARIANTS}
# Issue 22's targets, per model: loadonce with batching at 60% of the raw floor or more on the
# overhead-bound iris, at 90% of the model's in-process batched rate or more on the forest.
FLOOR_TARGET = {"iris": 0.60}
INPROCESS_TARGET = {"forest": 0.90}


@dataclass(frozen=True)
class Ratio:
    """``top`` / ``bottom`` (None: not run); ``target``: the least share (or, ``at_most``, the
    most) that meets it; None: no target, the figure is only shown."""

    name: str
    unit: str
    top: float | None
    bottom: float | None
    target: float | None = None
    at_most: bool = False
    missing: str = ""

    @property
    def share(self) -> float | None:
        if self.top is None or not self.bottom:
            return None
        return self.top / self.bottom

    @property
    def met(self) -> bool | None:
        share = self.share
        if share is None or self.target is None:
            return None
        return share <= self.target if self.at_most else share >= self.target

    def line(self) -> str:
        share = self.share
        if share is None:
            why = self.missing or "not measured"
            return f"- {self.name} ({self.unit}): n/a ({why})"
        digits = 2 if self.unit.endswith("ms") else 0
        text = f"- {self.name} ({self.unit}): {num(self.top, digits)} / "
        text += f"{num(self.bottom, digits)} = {share:.0%}"
        if self.target is not None:
            sign = "<=" if self.at_most else ">="
            text += f" (target {sign} {self.target:.0%}: {'met' if self.met else 'missed'})"
        return text


def num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def run_cells(runs: list[dict[str, Any]]) -> list[str]:
    """req/s as 'first / second', then the better run's p50 and p99, and all errors."""
    rates = " / ".join(f"{run['req_per_s']:,.0f}" for run in runs)
    best = max(runs, key=lambda run: run["req_per_s"])
    errors = sum(run["errors"] for run in runs)
    return [rates, num(best["p50_ms"], 2), num(best["p99_ms"], 1), str(errors)]


def best_rate(measured: dict[str, Any] | None, connections: str = "c64") -> float | None:
    """The better run's req/s, as the table shows it; None: not run."""
    runs = (measured or {}).get(connections)
    return max(run["req_per_s"] for run in runs) if runs else None


def table_p50(measured: dict[str, Any] | None, connections: str = "c1") -> float | None:
    """The p50 of the better run (by req/s), as the table shows it; None: not run."""
    runs = (measured or {}).get(connections)
    if not runs:
        return None
    p50: float | None = max(runs, key=lambda run: run["req_per_s"])["p50_ms"]
    return p50


def ratios(model: str, entry: dict[str, Any]) -> list[Ratio]:
    """The model's ratios: loadonce with batching against the raw floor and (rows/s) against
    the model in-process on batches; loadonce's defaults against the plain `async def`
    handler and against loadonce with explicit batching, at c64 (req/s) and c1 (p50)."""
    variants: dict[str, Any] = entry["variants"]

    def missing(*keys: str) -> str:
        absent = [key for key in keys if key not in variants]
        return f"not run: {', '.join(absent)}" if absent else ""

    def name(key: str) -> str:
        return _LABELS.get(key, key)

    inprocess = entry.get("inprocess_rows_per_s") or None
    return [
        Ratio(
            f"{name('a')} / raw floor",
            "c64 req/s",
            best_rate(variants.get("a")),
            best_rate(variants.get("raw")),
            FLOOR_TARGET.get(model),
            missing=missing("a", "raw"),
        ),
        Ratio(
            f"{name('a')} / model in-process on batches of 32",
            "c64 req/s against rows/s",
            best_rate(variants.get("a")),
            inprocess,
            INPROCESS_TARGET.get(model),
            missing=missing("a") or ("" if inprocess else "in-process bound not measured"),
        ),
        Ratio(
            f"{name('defaults')} / {name('d')}",
            "c64 req/s",
            best_rate(variants.get("defaults")),
            best_rate(variants.get("d")),
            missing=missing("defaults", "d"),
        ),
        Ratio(
            f"{name('defaults')} / {name('a')}",
            "c64 req/s",
            best_rate(variants.get("defaults")),
            best_rate(variants.get("a")),
            missing=missing("defaults", "a"),
        ),
        Ratio(
            f"{name('defaults')} / {name('d')}",
            "c1 p50 ms",
            table_p50(variants.get("defaults")),
            table_p50(variants.get("d")),
            1.0,
            at_most=True,
            missing=missing("defaults", "d"),
        ),
    ]


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
        lines += [f"Ratios, {model}:", "", *(r.line() for r in ratios(model, entry)), ""]
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
