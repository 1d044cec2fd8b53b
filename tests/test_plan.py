"""`loadonce plan`: measure the models once, predict N workers, refuse what cannot fit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.servers import REPO_ROOT, cli_env

MIB = 1 << 20


def _loadonce(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadonce", *args],
        env=cli_env(tmp_path),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _megabytes(text: str, label: str) -> float:
    match = re.search(rf"{label}\s+[\d.]+\s+([\d,.]+) MiB\s+([\d,.]+) MiB", text)
    assert match, text
    return float(match.group(2).replace(",", ""))


def test_the_plan_counts_mapped_weights_once_and_refuses_what_cannot_fit(tmp_path: Path) -> None:
    weights = tmp_path / "wide.safetensors"
    save_file({"weight": torch.zeros(1_000, 10_000)}, weights)  # 40 MB
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
    fits = _loadonce(tmp_path, "plan", str(config), "--workers", "4")
    assert fits.returncode == 0, fits.stderr
    shared = _megabytes(fits.stdout, "wide")
    assert abs(shared - weights.stat().st_size / MIB) < 4, fits.stdout
    assert "4 workers x" in fits.stdout
    assert "fits" in fits.stdout

    refused = _loadonce(tmp_path, "plan", str(config), "--workers", "4", "--memory-limit", "50MB")
    assert refused.returncode == 1
    assert "DOES NOT FIT" in refused.stdout
    assert "the limit given" in refused.stdout

    serve = _loadonce(
        tmp_path, "serve", str(config), "--workers", "2", "--memory-limit", "50MB", "--port", "0"
    )
    assert serve.returncode == 3
    assert "DOES NOT FIT" in serve.stdout + serve.stderr
    assert "would not fit in memory (--force starts anyway)" in serve.stdout + serve.stderr

    wrong = _loadonce(tmp_path, "plan", str(config), "--memory-limit", "lots")
    assert wrong.returncode == 2
    assert "not a size" in wrong.stderr
