"""The benchmark harness's own pieces: reading wrk's output, writing the table and its ratios
against their targets, the configs loadonce's variants are served with, and a smoke run of
`python -m bench.compare --quick` against loadonce and the raw-HTTP floor (real wrk, real
servers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from bench import servers, wrk
from bench import transformers as transformers_bench
from bench.report import render

from tests.servers import REPO_ROOT

# Measures the memory (or the speed) of the processes it starts: run apart from other tests
# (make test runs these after the rest, on one process).
pytestmark = pytest.mark.alone

# wrk 4.1's output for a run with --latency (captured here), then the lines it adds on errors.
CLEAN = """Running 1s test @ http://127.0.0.1:8977/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.97ms    2.08ms  19.90ms   82.44%
    Req/Sec     1.41k   374.46     2.05k    60.00%
  Latency Distribution
     50%    2.25ms
     75%    3.82ms
     90%    5.54ms
     99%   11.27ms
  1402 requests in 1.01s, 1.48MB read
Requests/sec:   1394.29
Transfer/sec:      1.47MB
"""
WITH_ERRORS = """Running 2s test @ http://127.0.0.1:8000/models/m/predict
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.40us  101.20us   1.90s    91.00%
    Req/Sec     3.10k   200.00     3.50k    70.00%
  Latency Distribution
     50%  790.00us
     75%  850.00us
     90%  900.00us
     99%     1.20s
  6200 requests in 2.00s, 1.10MB read
  Socket errors: connect 0, read 12, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:   3100.00
Transfer/sec:    563.00KB
"""


def test_wrk_output_is_read_with_its_units_and_every_kind_of_error() -> None:
    clean = wrk.parse(CLEAN)
    assert clean.req_per_s == pytest.approx(1394.29)
    assert clean.p50_ms == pytest.approx(2.25)
    assert clean.p99_ms == pytest.approx(11.27)
    assert clean.errors == 0
    assert clean.socket_errors == "none"
    failing = wrk.parse(WITH_ERRORS)
    assert failing.p50_ms == pytest.approx(0.79)
    assert failing.p99_ms == pytest.approx(1200.0)
    assert failing.errors == 7 + 12 + 3
    assert failing.socket_errors == "connect 0, read 12, write 0, timeout 3"
    with pytest.raises(ValueError, match="not wrk"):
        wrk.parse("wrk: connection refused\n")


def _run(rate: float, p50: float, errors: int = 0) -> dict[str, object]:
    return {"req_per_s": rate, "p50_ms": p50, "p99_ms": p50 * 4, "errors": errors}


def test_the_table_shows_both_runs_the_better_latency_and_all_errors() -> None:
    results = {
        "date": "2026-11-24",
        "cpu": "a test CPU",
        "seconds": 5,
        "versions": {"loadonce env": {"loadonce": "0.1"}, "litserve": {"litserve": "0.2.19"}},
        "models": {
            "iris": {
                "inprocess_rows_per_s": 123456.0,
                "variants": {
                    "a": {
                        "c64": [_run(2000, 30.0, errors=1), _run(2100, 29.0, errors=2)],
                        "c1": [_run(900, 1.1)],
                        "memory": {"rss_mib": 150.4, "pss_mib": 120.2},
                    },
                    "litserve_batch": {"c64": [_run(500, 100.0)]},
                },
            }
        },
    }
    table = render(results)
    assert "Run of 2026-11-24 on a test CPU" in table
    assert "litserve 0.2.19" in table
    assert "123,456 rows/s" in table
    [loadonce_row] = [
        line for line in table.splitlines() if line.startswith("| loadonce, batching")
    ]
    cells = [cell.strip() for cell in loadonce_row.strip("|").split("|")]
    assert cells[1:5] == ["2,000 / 2,100", "29.00", "116.0", "3"]
    assert cells[5:9] == ["900", "1.10", "4.4", "0"]
    assert cells[9:] == ["150", "120"]
    [peer_row] = [line for line in table.splitlines() if line.startswith("| LitServe, batching")]
    assert "not run" in peer_row


def test_the_ratios_under_each_table_say_met_or_missed_and_n_a_for_what_was_not_run() -> None:
    def measured(rate: float, p50: float) -> dict[str, object]:
        return {"c64": [_run(rate * 0.9, 40.0), _run(rate, 30.0)], "c1": [_run(900, p50)]}

    results = {
        "date": "2026-12-02",
        "cpu": "a test CPU",
        "seconds": 5,
        "versions": {"loadonce env": {"loadonce": "0.1"}},
        "models": {
            "iris": {
                "inprocess_rows_per_s": 0.0,
                "variants": {
                    "d": measured(5000, 0.50),
                    "a": measured(6000, 0.45),
                    "defaults": measured(5500, 0.55),
                    "raw": measured(10000, 0.20),
                },
            },
            "forest": {
                "inprocess_rows_per_s": 2000.0,
                "variants": {"a": measured(1900, 2.0), "defaults": measured(1800, 2.1)},
            },
        },
    }
    table = render(results)
    assert "| bound: raw ASGI app (read, json.loads, constant) | 9,000 / 10,000 |" in table
    lines = table.splitlines()
    iris = lines[lines.index("Ratios, iris:") :]
    assert iris[2] == (
        "- loadonce, batching / raw floor (c64 req/s): 6,000 / 10,000 = 60% (target >= 60%: met)"
    )
    assert iris[3].endswith("n/a (in-process bound not measured)")
    assert iris[4] == (
        "- loadonce, defaults (no options) / FastAPI, lifespan + async def handler (c64 req/s): "
        "5,500 / 5,000 = 110%"
    )
    assert iris[5].endswith("(c64 req/s): 5,500 / 6,000 = 92%")
    assert iris[6].endswith("(c1 p50 ms): 0.55 / 0.50 = 110% (target <= 100%: missed)")
    forest = lines[lines.index("Ratios, forest:") :]
    assert forest[2].endswith("(c64 req/s): n/a (not run: raw)")
    assert forest[3].endswith("1,900 / 2,000 = 95% (target >= 90%: met)")
    assert forest[4].endswith("n/a (not run: d)")


def test_loadonce_variants_say_batching_off_explicit_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "b" must say `batching = false` (loadonce batches scikit-learn by default), "defaults"
    nothing beyond the model, "a" its explicit batching."""
    monkeypatch.setattr(servers, "RESULTS", tmp_path)
    configs = {
        key: tomllib.loads(
            servers.loadonce_config(tmp_path / "iris.skops", batching=batching).read_text()
        )
        for key, batching in servers.LOADONCE_BATCHING.items()
    }
    assert configs["b"]["models"][0]["batching"] is False
    assert configs["a"]["models"][0]["batching"] == {"max_batch_size": 64, "fill_wait_ms": 2}
    assert configs["a"]["models"][0]["concurrency"] == "serialized"
    assert set(configs["defaults"]["models"][0]) == {"name", "artifact", "options"}
    assert configs["defaults"]["server"] == {"log_level": "warning"}


def test_the_transformers_table_says_what_batching_and_loadonce_gain() -> None:
    """`bench.transformers`' table and ratios, from figures given here (its real run starts
    three servers importing torch: about a minute even with --quick, too long for this file)."""

    def measured(rate: float, p50: float, mean_batch: float | None) -> dict[str, object]:
        return {
            "c16": [_run(rate, p50 * 10), _run(rate * 0.9, p50 * 11)],
            "c1": [_run(300, p50)],
            "c16_mean_batch": mean_batch,
            "c16_cpu_ms_per_request": 0.75,
            "memory": {"rss_mib": 420.0},
        }

    results: dict[str, Any] = {
        "date": "2026-12-02",
        "cpu": "a test CPU",
        "seconds": 15,
        "warmup": 3,
        "runs": 2,
        "many_connections": 16,
        "versions": {"transformers": "5.23.0"},
        "model": {
            **transformers_bench.BERT,
            "vocab_size": 70,
            "parameters": 307_586,
            "directory_bytes": 1_258_291,
            "sentence_tokens": 13,
        },
        "batching": {"max_batch_size": 16, "max_wait_ms": 0, "fill_wait_ms": 2},
        "labels": dict(transformers_bench.VARIANTS),
        "models": {
            "transformers": {
                "inprocess": {"torch_threads": 1, "ms_per_call": {"1": 2.0, "16": 6.4}},
                "inprocess_rows_per_s": 2500.0,
                "variants": {
                    "b": measured(350, 3.0, 1.0),
                    "a": measured(1400, 3.3, 13.0),
                    "c": measured(700, 2.5, None),
                },
            }
        },
    }
    ratios = transformers_bench.ratios(results)
    assert ratios["c16 batching / no batching"] == pytest.approx(4.0)
    assert ratios["c16 loadonce batching / plain FastAPI"] == pytest.approx(2.0)
    assert ratios["c1 p50 batching / no batching"] == pytest.approx(1.1)
    results["ratios"] = ratios
    table = transformers_bench.render(results)
    assert "307,586 parameters" in table
    [batched] = [line for line in table.splitlines() if line.startswith("| loadonce, batching")]
    cells = [cell.strip() for cell in batched.strip("|").split("|")]
    assert cells[1:3] == ["1,400 / 1,260", "33.00"]
    assert cells[-3:] == ["13.0", "0.75", "420"]
    assert "- c16 batching / no batching: 4.00" in table


@pytest.mark.timeout(300)
@pytest.mark.skipif(
    shutil.which("wrk") is None and not os.environ.get("CI"),
    reason="wrk is not installed (make test installs it with apt-get when run as root; "
    "in CI its absence fails this test)",
)
def test_a_quick_run_against_loadonce_and_the_raw_floor_measures_each_variant() -> None:
    # The shortest run that still goes through every step: 1 s per wrk run, no warm-up; the
    # servers stop at once on SIGTERM (no readiness window to wait out).
    command = [
        "--quick",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--only",
        "loadonce,raw",
        "--models",
        "iris",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "bench.compare", *command],
        cwd=REPO_ROOT,
        env={**os.environ, "LOADONCE_STOP_DELAY_S": "0"},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((REPO_ROOT / "bench" / "results" / "compare.json").read_text())
    variants = results["models"]["iris"]["variants"]
    assert set(variants) == {"a", "b", "defaults", "raw"}
    for measured in variants.values():
        for connections in ("c64", "c1"):
            [run] = measured[connections]
            assert run["req_per_s"] > 0
            assert run["errors"] == 0
        assert measured["memory"]["rss_mib"] > 0
    assert "| loadonce, batching |" in done.stdout
    assert "| bound: raw ASGI app (read, json.loads, constant) |" in done.stdout
    assert "- loadonce, batching / raw floor (c64 req/s): " in done.stdout
    assert "[2/4] iris · loadonce, batching c64" in done.stderr


def test_tracing_measured_together_is_judged_on_requests_per_cpu_second() -> None:
    """Servers sharing one core get shares of it: the 10% server answering as many requests a
    second as "off" on a larger share of the core still costs more a request, and the verdict
    says so; the two "off" servers against each other show the method's own noise."""
    from bench.tracing_together import ratios, render

    def run(req_per_s: float, cpu_s: float) -> dict[str, float]:
        return {
            "req_per_s": req_per_s,
            "req_per_cpu_s": req_per_s * 10 / cpu_s,
            "cpu_share": cpu_s / 10,
            "p99_ms": 50.0,
            "errors": 0,
        }

    rounds = [
        {
            "off #1": run(1000, 2.0),
            "off #2": run(1000, 2.02),
            "10% #1": run(1000, 2.2),
            "10% #2": run(1000, 2.2),
            "100% #1": run(800, 2.4),
        }
        for _ in range(3)
    ]
    assert ratios(rounds, "10%", "req_per_s") == [1.0, 1.0, 1.0]
    [per_cpu] = set(ratios(rounds, "10%", "req_per_cpu_s"))
    assert per_cpu == pytest.approx((1 / 2.2) / ((1 / 2.0 + 1 / 2.02) / 2))
    results = {
        "date": "2026-12-04",
        "cpu": "a test CPU",
        "seconds": 10,
        "warmup": 5,
        "instances": 2,
        "versions": {"loadonce": "0.1"},
        "rounds": rounds,
        "exports": 7,
    }
    table = render(results)
    assert "- 10% sampling: 8.6% fewer requests per CPU-second than off" in table
    assert "(target at most 5%: missed)" in table
    assert "against each other per round: 0.990 / 0.990 / 0.990" in table
