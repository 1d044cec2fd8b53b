"""Memory with many workers: one copy of mapped weights, or one per worker.

Run by `make bench-memory`. A generated model with about 2 GB of float32 weights in two forms:
a PyTorch linear layer saved as safetensors, and a scikit-learn KNeighborsClassifier (brute
force: it keeps its 2 GB training array) saved uncompressed with joblib. For 1 and 4 workers,
with `share = "mmap"` and `"off"`: the time from start to every worker ready, the peak total
PSS of the server's processes while starting (sampled every 0.2 s), and the total PSS once
ready. Writes bench/results/memory.json and .md.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil

from bench.compare import cpu_name as _cpu_name
from bench.servers import RESULTS
from bench.servers import free_port as _free_port

ROOT = Path(__file__).resolve().parent.parent
DIRECTORY = RESULTS / "memory"
IN_FEATURES, OUT_FEATURES = 32_768, 16_384  # 536 M float32 weights: 2.1 GB
ROWS, COLUMNS = 13_107_200, 40  # 524 M float32 values: 2.1 GB


def build_big_linear() -> Any:
    """The factory the safetensors file is loaded into."""
    import torch

    return torch.nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False)


def _artifacts() -> dict[str, Path]:
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    paths = {"safetensors": DIRECTORY / "big.safetensors", "joblib": DIRECTORY / "big.joblib"}
    if not paths["safetensors"].exists():
        import torch
        from safetensors.torch import save_file

        save_file({"weight": torch.full((OUT_FEATURES, IN_FEATURES), 0.001)}, paths["safetensors"])
    if not paths["joblib"].exists():
        import joblib
        import numpy as np
        from sklearn.neighbors import KNeighborsClassifier

        points = np.ones((ROWS, COLUMNS), dtype=np.float32)
        labels = np.arange(ROWS) % 3
        model = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(points, labels)
        joblib.dump(model, paths["joblib"])
    return paths


def _config(form: str, artifact: Path, workers: int, share: str) -> Path:
    lines = [
        "[server]",
        f"workers = {workers}",
        'log_level = "warning"',
        "memory_plan = false",
        "",
        "[[models]]",
        'name = "big"',
        f'artifact = "{artifact}"',
        f'share = "{share}"',
    ]
    if form == "safetensors":
        lines += [
            'options = { factory = "bench.memory:build_big_linear" }',
            f"input_shape = [{IN_FEATURES}]",
            f"warmup = [[{', '.join(['0.0'] * IN_FEATURES)}]]",
        ]
    else:
        lines += ["trust = true", f"warmup = [[{', '.join(['1.0'] * COLUMNS)}]]"]
    path = DIRECTORY / f"{form}-{workers}-{share}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _tree_pss(root: psutil.Process) -> int:
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += int(process.memory_full_info().pss)
    return total


def _measure(config: Path) -> dict[str, float]:
    port = _free_port()
    command = [sys.executable, "-m", "loadonce", "serve", str(config), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    root = psutil.Process(process.pid)
    peak = 0
    try:
        while True:
            peak = max(peak, _tree_pss(root))
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} for {config}")
            time.sleep(0.2)
        ready_s = time.monotonic() - started
        time.sleep(1)
        settled = _tree_pss(root)
        return {
            "ready_s": ready_s,
            "peak_pss_mib": max(peak, settled) / 2**20,
            "pss_mib": settled / 2**20,
        }
    finally:
        process.terminate()
        process.wait(120)


def main() -> None:
    paths = _artifacts()
    results: dict[str, Any] = {"cpu": _cpu_name(), "runs": {}}
    for form, artifact in paths.items():
        size = artifact.stat().st_size / 2**20
        results["runs"].setdefault(form, {"artifact_mib": size})
        for share in ("mmap", "off"):
            for workers in (1, 4):
                measured = _measure(_config(form, artifact, workers, share))
                results["runs"][form][f"{share}-{workers}"] = measured
                print(form, share, workers, measured, flush=True)
    (RESULTS / "memory.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "memory.md").write_text(render(results))
    print(render(results))


def render(results: dict[str, Any]) -> str:
    lines = [
        f"CPU: {results['cpu']}",
        "",
        "| artifact | share | workers | ready after s | peak PSS while starting MiB | "
        "PSS when ready MiB | PSS 4 workers / 1 worker |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for form, runs in results["runs"].items():
        for share in ("mmap", "off"):
            one, four = runs[f"{share}-1"], runs[f"{share}-4"]
            for workers, run in ((1, one), (4, four)):
                ratio = f"{four['pss_mib'] / one['pss_mib']:.2f}" if workers == 4 else ""
                lines.append(
                    f"| {form} ({runs['artifact_mib']:,.0f} MiB) | {share} | {workers} | "
                    f"{run['ready_s']:.1f} | {run['peak_pss_mib']:,.0f} | {run['pss_mib']:,.0f} "
                    f"| {ratio} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
