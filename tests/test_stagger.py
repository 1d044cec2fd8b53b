"""With several workers, each loads in turn, so the startup memory peak is one load's."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.servers import cli_env, serving


def _load_intervals(tmp_path: Path, stagger: bool) -> list[tuple[float, float]]:
    config = tmp_path / "loadonce.toml"
    config.write_text(
        f"""
[server]
workers = 3
stagger_loading = {"true" if stagger else "false"}
memory_plan = false  # the plan would run the loader once more, in its own process

[[models]]
name = "slow"
loader = "tests.loaders:slow_recorded_load"
"""
    )
    log = tmp_path / "loads.txt"
    env = cli_env(tmp_path, {"LOADONCE_TEST_LOAD_LOG": str(log)})
    with serving([str(config)], tmp_path, env=env) as server:
        pass
    if stagger:
        assert "waited" in server.log()
        assert "for its turn to load" in server.log()
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len({pid for pid, _, _ in lines}) == 3
    return sorted((float(start), float(end)) for _, start, end in lines)


@pytest.mark.parametrize("stagger", [True, False], ids=["staggered", "at-once"])
def test_workers_take_turns_to_load(tmp_path: Path, stagger: bool) -> None:
    intervals = _load_intervals(tmp_path, stagger)
    overlapping = any(
        later_start < earlier_end
        for (_, earlier_end), (later_start, _) in itertools.pairwise(intervals)
    )
    assert overlapping is not stagger, intervals
