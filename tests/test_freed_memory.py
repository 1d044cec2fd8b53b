"""A worker gives a model call's large temporaries back to the system once the call freed
them (``malloc_mmap_threshold``), instead of keeping them resident between calls as glibc's
default does once it has seen a large block freed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx2 as httpx
import psutil
import pytest

from loadonce.server.allocator import GLIBC_VARIABLES, map_large_blocks
from tests.servers import serving

# Measures the memory (or the speed) of the processes it starts: run apart from other tests
# (make test runs these after the rest, on one process).
pytestmark = pytest.mark.alone

# Each call fills a 24 MiB temporary in the model's thread, then frees it.
_LOADER = """
import numpy as np


def loader():
    def predict(batch):
        scratch = np.ones(3 * 1024 * 1024)
        return [x + scratch[0] for x in batch]

    return predict
"""
CALLS = 6
MIB = 1 << 20


def _growth_after_calls(tmp_path: Path, threshold: str | None) -> float:
    """How much the server's resident memory grew over ``CALLS`` predictions, in MiB."""
    tmp_path.mkdir()
    (tmp_path / "scratch_loader.py").write_text(_LOADER)
    setting = "" if threshold is None else f"malloc_mmap_threshold = {threshold}"
    config = tmp_path / "serve.toml"
    config.write_text(
        textwrap.dedent(f"""
            [server]
            {setting}

            [[models]]
            name = "scratch"
            loader = "scratch_loader:loader"
            input_shape = []
        """)
    )
    with serving([str(config)], tmp_path) as server:
        process = psutil.Process(server.process.pid)
        url = f"{server.url}/models/scratch/predict"
        answer = httpx.post(url, json={"inputs": [1.0]})  # the first call: glibc maps it
        assert answer.status_code == 200, answer.text
        before = process.memory_info().rss
        for _ in range(CALLS):
            answer = httpx.post(url, json={"inputs": [2.0]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["outputs"] == [3.0]
        return (process.memory_info().rss - before) / MIB


def test_a_calls_large_temporary_is_given_back_by_default_and_kept_with_the_setting_off(
    tmp_path: Path,
) -> None:
    default = _growth_after_calls(tmp_path / "default", None)
    off = _growth_after_calls(tmp_path / "off", '"0"')
    assert default < 8, default
    # glibc's own default keeps the freed 24 MiB for the next call: what the setting avoids.
    assert off > 16, off


@pytest.mark.parametrize("variable", GLIBC_VARIABLES)
def test_glibcs_own_variables_are_the_operators_choice(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, "65536")
    assert map_large_blocks(4 * MIB) is False


def test_zero_leaves_glibcs_default() -> None:
    assert map_large_blocks(0) is False
