"""With several workers, each loads in turn, so the startup memory peak is what the memory
holds: one load at a time, or as many as the memory plan shows room for (one per CPU at most)."""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path

import pytest

from tests.servers import cli_env, serving


def _load_intervals(tmp_path: Path, stagger: bool, plan: bool = False) -> list[tuple[float, float]]:
    config = tmp_path / "loadonce.toml"
    config.write_text(
        f"""
[server]
workers = 3
stagger_loading = {"true" if stagger else "false"}
memory_plan = {"true" if plan else "false"}

[[models]]
name = "slow"
loader = "tests.loaders:slow_recorded_load"
"""
    )
    log = tmp_path / "loads.txt"
    env = cli_env(tmp_path, {"LOADER_TEST_LOAD_LOG": str(log)})
    with serving([str(config)], tmp_path, env=env) as server:
        pass
    if stagger and not plan:
        assert "waited" in server.log()
        assert "for its turn to load" in server.log()
    lines = [line.split() for line in log.read_text().splitlines()]
    if plan:  # the plan loads the model once first, in its own process
        assert re.search(r"workers load \d+ at a time", server.log()), server.log()
        lines = sorted(lines, key=lambda line: float(line[1]))[1:]
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


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    return max(
        sum(1 for start, end in intervals if start <= moment < end) for moment, _ in intervals
    )


def test_workers_load_side_by_side_when_the_plan_shows_room(tmp_path: Path) -> None:
    # The slow load holds no memory while it loads: the plan shows room for every worker to
    # load at once, and allows one per CPU.
    intervals = _load_intervals(tmp_path, stagger=True, plan=True)
    assert _most_at_once(intervals) == min(3, len(os.sched_getaffinity(0))), intervals
