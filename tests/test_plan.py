"""`loadonce plan`: measure the models once, predict N workers, refuse what cannot fit."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest
import torch
from safetensors.torch import save_file

from loadonce.server.plan import Available, MemoryPlan
from tests.servers import cli_env, run_cli, serving

# Measures the memory (or the speed) of the processes it starts: run apart from other tests
# (make test runs these after the rest, on one process).
pytestmark = pytest.mark.alone

MIB = 1 << 20


def _row(text: str, label: str) -> list[str]:
    """A model's row of the plan's table: name, load s, private / worker, once per server,
    of which requests."""
    match = re.search(
        rf"^{label}\s+([\d.]+)\s+([\d,.]+) MiB\s+([\d,.]+) MiB\s+(.+)$", text, re.MULTILINE
    )
    assert match, text
    return [label, *match.groups()]


def _mib(cell: str) -> float:
    return float(cell.removesuffix(" MiB").replace(",", ""))


def _megabytes(text: str, label: str) -> float:
    """A model's memory held once per server, in MiB."""
    return _mib(_row(text, label)[3])


def _wide_model(tmp_path: Path) -> tuple[Path, Path]:
    """A 40 MB safetensors model and its config: (config, weights)."""
    weights = tmp_path / "wide.safetensors"
    save_file({"weight": torch.zeros(1_000, 10_000)}, weights)
    config = tmp_path / "loadonce.toml"
    config.write_text(
        f"""
[[models]]
name = "wide"
artifact = "{weights}"
options = {{ factory = "tests.loaders:build_wide_linear_small" }}
input_shape = [10000]
warmup = [{", ".join(["1.0"] * 10_000)}]
"""
    )
    return config, weights


def _total(text: str) -> float:
    match = re.search(r"= ([\d,.]+) MiB\n", text)
    assert match, text
    return float(match.group(1).replace(",", ""))


def test_the_plan_counts_mapped_weights_once_and_refuses_what_cannot_fit(tmp_path: Path) -> None:
    config, weights = _wide_model(tmp_path)
    fits = run_cli(tmp_path, "plan", str(config), "--workers", "4")
    assert fits.returncode == 0, fits.stderr
    shared = _megabytes(fits.stdout, "wide")
    assert abs(shared - weights.stat().st_size / MIB) < 4, fits.stdout
    assert "4 workers x" in fits.stdout
    assert "fits" in fits.stdout

    # Kubernetes' units, as a pod's limit is written.
    refused = run_cli(tmp_path, "plan", str(config), "--workers", "4", "--memory-limit", "48Mi")
    assert refused.returncode == 1
    assert "DOES NOT FIT" in refused.stdout
    assert "available: 48.0 MiB (the limit given)" in refused.stdout

    serve = run_cli(
        tmp_path, "serve", str(config), "--workers", "2", "--memory-limit", "50MB", "--port", "0"
    )
    assert serve.returncode == 3
    assert "DOES NOT FIT" in serve.stdout + serve.stderr
    # The table as lines (its line breaks were escaped: one line full of \x0a).
    assert "\\x0a" not in serve.stdout + serve.stderr
    assert any(line.endswith("DOES NOT FIT") for line in serve.stderr.splitlines())
    assert "would not fit in memory (--force starts anyway)" in serve.stdout + serve.stderr

    wrong = run_cli(tmp_path, "plan", str(config), "--memory-limit", "lots")
    assert wrong.returncode == 2
    assert "invalid server option: memory_limit: could not parse value and unit" in wrong.stderr


def test_the_plan_predicts_what_the_server_then_takes(tmp_path: Path) -> None:
    """The total the plan prints for 2 workers is close to the PSS, summed over every process
    of the server, of a real 2-worker server after a request to each model."""
    config, _ = _wide_model(tmp_path)
    planned = run_cli(tmp_path, "plan", str(config), "--workers", "2")
    assert planned.returncode == 0, planned.stderr
    predicted = _total(planned.stdout)
    with serving([str(config), "--workers", "2"], tmp_path, env=cli_env(tmp_path)) as server:
        answer = httpx.post(
            f"{server.url}/models/wide/predict", json={"inputs": [[0.5] * 10_000]}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        root = psutil.Process(server.process.pid)
        processes = [root, *root.children(recursive=True)]
        measured = sum(p.memory_full_info().pss for p in processes) / MIB
    # The plan counts the libraries (here PyTorch) whole, as on a machine that serves only
    # this; the test processes (make test runs two) have imported PyTorch too and share its
    # pages with the server, which lowers the server's PSS by up to ~40 MiB for each.
    shared_with_tests = 2 * 40
    assert 0.9 * measured < predicted < 1.2 * measured + shared_with_tests, (
        predicted,
        measured,
        planned.stdout,
    )


def test_the_plan_counts_what_a_few_predictions_keep_and_says_what_it_left_out(
    tmp_path: Path,
) -> None:
    """Each of the first four calls of `growing` keeps 16 MiB: its warm-up at load made one,
    the plan's three rounds of it the next three, which the worker's figure includes. `echo`
    has no warm-up example: the plan says its requests are left out."""
    config = tmp_path / "loadonce.toml"
    config.write_text(
        """
[[models]]
name = "growing"
loader = "tests.loaders:growing_cache"
warmup = [1.0, 2.0]

[[models]]
name = "echo"
loader = "tests.loaders:echo"
"""
    )
    planned = run_cli(tmp_path, "plan", str(config), "--workers", "2")
    assert planned.returncode == 0, planned.stderr
    _, _, private, _, requests = _row(planned.stdout, "growing")
    assert 44 < _mib(requests) < 56, planned.stdout  # 3 x 16 MiB
    assert _mib(private) > 60, planned.stdout  # and the load's 16 MiB
    assert _row(planned.stdout, "echo")[4] == "left out", planned.stdout
    assert (
        "echo: no warmup example, so what its requests allocate is left out of the plan"
        in planned.stdout
    )
    assert "growing:" not in planned.stdout


def _at_once(text: str) -> int:
    match = re.search(r"; (\d+) at a time, the server at most ([\d,.]+) MiB", text)
    assert match, text
    return int(match.group(1))


def test_the_plan_measures_a_loads_passing_peak_and_lets_loads_share_only_the_room_left(
    tmp_path: Path,
) -> None:
    """A load that holds 256 MiB for a moment: a worker peaks that much above what it keeps.
    With room for it, workers load side by side (one per CPU, at most); with less room than
    two such peaks above the steady total, one at a time."""
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "peaky"\nloader = "tests.loaders:passing_peak"\n')
    planned = run_cli(tmp_path, "plan", str(config), "--workers", "3")
    assert planned.returncode == 0, planned.stderr
    peak = re.search(r"a worker peaks at ([\d,.]+) MiB", planned.stdout)
    assert peak, planned.stdout
    assert float(peak.group(1).replace(",", "")) >= 256, planned.stdout
    assert _at_once(planned.stdout) == min(3, len(os.sched_getaffinity(0)))

    room_for_one = f"{int(_total(planned.stdout)) + 300}MiB"
    tight = run_cli(tmp_path, "plan", str(config), "--workers", "3", "--memory-limit", room_for_one)
    assert tight.returncode == 0, tight.stdout
    assert _at_once(tight.stdout) == 1, tight.stdout


def test_as_many_load_at_once_as_the_room_above_the_steady_total_holds() -> None:
    plan = MemoryPlan(
        workers=4,
        base_private_bytes=100 * MIB,
        libraries_bytes=0,
        supervisor_bytes=0,
        models=[],
        available=Available(1000 * MIB, "the limit given"),
        load_transient_bytes=200 * MIB,
    )
    # 4 workers keep 400 MiB; a loading one holds 200 MiB more: 600 MiB of room, 3 loads.
    assert plan.load_peak_bytes == 300 * MIB
    assert plan.loads_at_once(cpus=8) == 3
    assert plan.startup_peak(3) == 1000 * MIB
    assert plan.loads_at_once(cpus=2) == 2
    steady = dataclasses.replace(plan, load_transient_bytes=0)
    assert steady.loads_at_once(cpus=8) == 4  # a load holds no more than the worker keeps
    crowded = dataclasses.replace(plan, available=Available(450 * MIB, "the limit given"))
    assert crowded.loads_at_once(cpus=8) == 1  # one at a time, as without a plan
