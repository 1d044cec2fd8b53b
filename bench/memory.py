"""Memory and startup with many workers: one copy of mapped weights, the plan against the
truth, and what prefault does to each worker's first answer.

Run by `make bench-memory`. A generated model with about 1 GB of float32 weights in two forms:
a PyTorch linear layer saved as safetensors, and a scikit-learn KNeighborsClassifier (brute
force: it keeps its 1 GB training array, float64) saved uncompressed with joblib.

- Memory: for 1 and 4 workers, with `share = "mmap"` and `"off"` (one warm-up example, prefault
  by default): the time from start to every worker ready, the peak total PSS of the server's
  processes while starting (sampled every 0.2 s; supervisor, fork server and workers), then
  predictions until every worker has answered some (each connection asks `/models` which
  worker it reached), and the total PSS after that traffic; beside it, the total
  `loadonce plan --workers N` printed for the same configuration.
- First answers: 4 workers, mapped weights, no warm-up (a warm-up reads every weight, as a
  prefault does), the artifact dropped from the page cache before each start (a fresh
  machine): each worker's first prediction's time, with prefault on and off. One prediction
  at a time, each on a new connection, until every worker answered one: concurrent ones
  would measure the CPUs' sharing rather than the weights' reading.

- Startup (issue 22): 4 workers with `share = "off"` (each reads its own copy), loading one at
  a time (no plan), side by side as the memory plan allows, and all at once: the time to every
  worker ready, the peak total PSS while starting, each worker's load time (from its log
  line), and the plan's own figure for the startup peak.

Targets (printed met or missed): with mapped weights, 4 workers take at most 1.15x the memory
of 1, for both forms; the plan for 4 workers is within 10% of the measured total after
traffic. Writes bench/results/memory.json and .md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil

from bench.compare import cpu_name as _cpu_name
from bench.servers import RESULTS
from bench.servers import free_port as _free_port

ROOT = Path(__file__).resolve().parent.parent
DIRECTORY = RESULTS / "memory"
IN_FEATURES, OUT_FEATURES = 16_384, 16_384  # 268 M float32 weights: 1.07 GB
# float64, as the runtime's inputs are: scikit-learn computes distances in the wider of the
# two dtypes, so float32 points would be copied to float64 by every prediction.
ROWS, COLUMNS = 3_276_800, 40  # 131 M float64 values: 1.05 GB
FORMS = ("safetensors", "joblib")
RATIO_TARGET = 1.15  # 4 workers' total PSS over 1 worker's, mapped weights
PLAN_TOLERANCE = 0.10  # the plan for 4 workers against the measured total
ROUNDS_AFTER_ALL_ANSWERED = 3  # rounds of predictions once every worker has answered
MOST_ROUNDS = 40


def build_big_linear() -> Any:
    """The factory the safetensors file is loaded into."""
    import torch

    return torch.nn.Linear(IN_FEATURES, OUT_FEATURES, bias=False)


def _artifact_paths() -> dict[str, Path]:
    return {
        "safetensors": DIRECTORY / "linear-1g.safetensors",
        "joblib": DIRECTORY / "knn-float64-1g.joblib",
    }


def write_artifacts() -> None:
    """Write the missing artifacts (each under a temporary name, then renamed: an interrupted
    run leaves no half file)."""
    paths = _artifact_paths()
    if not paths["safetensors"].exists():
        import torch
        from safetensors.torch import save_file

        partial = paths["safetensors"].with_suffix(".partial")
        save_file({"weight": torch.full((OUT_FEATURES, IN_FEATURES), 0.001)}, partial)
        partial.rename(paths["safetensors"])
    if not paths["joblib"].exists():
        import joblib
        import numpy as np
        from sklearn.neighbors import KNeighborsClassifier

        points = np.random.default_rng(0).random((ROWS, COLUMNS))
        labels = np.arange(ROWS) % 3
        model = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(points, labels)
        partial = paths["joblib"].with_suffix(".partial")
        joblib.dump(model, partial)
        partial.rename(paths["joblib"])


def _artifacts() -> dict[str, Path]:
    DIRECTORY.mkdir(parents=True, exist_ok=True)
    paths = _artifact_paths()
    if not all(path.exists() for path in paths.values()):
        # In a child: this process would otherwise hold PyTorch's and scikit-learn's pages,
        # shared with the servers it measures, and lower their PSS.
        code = "from bench.memory import write_artifacts; write_artifacts()"
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    return paths


def _example(form: str) -> list[float]:
    return [0.5] * (IN_FEATURES if form == "safetensors" else COLUMNS)


def _config(
    form: str,
    artifact: Path,
    *,
    workers: int,
    share: str = "mmap",
    warmup: bool = True,
    prefault: bool | None = None,
    loading: str = "one at a time",
    log_level: str = "warning",
) -> Path:
    lines = [
        "[server]",
        f"workers = {workers}",
        f'log_level = "{log_level}"',
        f"memory_plan = {str(loading == 'as the plan allows').lower()}",
        f"stagger_loading = {str(loading != 'all at once').lower()}",
        "",
        "[[models]]",
        'name = "big"',
        f'artifact = "{artifact}"',
        f'share = "{share}"',
    ]
    if prefault is not None:
        lines.append(f"prefault = {str(prefault).lower()}")
    if form == "safetensors":
        lines += [
            'options = { factory = "bench.memory:build_big_linear" }',
            f"input_shape = [{IN_FEATURES}]",
        ]
    else:
        lines.append("trust = true")
    if warmup:
        lines.append(f"warmup = [{json.dumps(_example(form))}]")
    how = loading.replace(" ", "-")
    name = f"{form}-{workers}-{share}-{'warmup' if warmup else 'cold'}-prefault-{prefault}-{how}"
    path = DIRECTORY / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _tree_pss(root: psutil.Process) -> int:
    """PSS summed over the server's processes: the supervisor, the fork server, the workers
    and any helper."""
    total = 0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += int(process.memory_full_info().pss)
    return total


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    ready_s: float
    peak_pss: int

    @property
    def root(self) -> psutil.Process:
        return psutil.Process(self.process.pid)


@contextlib.contextmanager
def _serving(config: Path, log: Path | None = None) -> Iterator[Server]:
    """Start `loadonce serve CONFIG`, sampling its PSS until it is ready; its log to ``log``."""
    port = _free_port()
    command = [sys.executable, "-m", "loadonce", "serve", str(config), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    log_file = log.open("w") if log is not None else None
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file
    )
    url = f"http://127.0.0.1:{port}"
    try:
        root, peak = psutil.Process(process.pid), 0
        with httpx.Client(timeout=1) as client:
            while True:
                peak = max(peak, _tree_pss(root))
                with contextlib.suppress(httpx.TransportError):
                    if client.get(f"{url}/readyz").status_code == 200:
                        break
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode} for {config}")
                time.sleep(0.2)
        yield Server(process, url, time.monotonic() - started, peak)
    finally:
        process.terminate()
        process.wait(120)
        if log_file is not None:
            log_file.close()


def _predict_once(url: str, body: dict[str, Any]) -> tuple[int, float, float]:
    """One prediction on a new connection, then `/models` on the same one: the worker that
    answered (its pid), when the prediction was sent and how long it took."""
    with httpx.Client(timeout=300) as client:
        sent = time.monotonic()
        answer = client.post(f"{url}/models/big/predict", json=body)
        took = time.monotonic() - sent
        answer.raise_for_status()
        pid = int(client.get(f"{url}/models").json()["worker_pid"])
    return pid, sent, took


def _traffic(url: str, form: str, workers: int) -> None:
    """Rounds of predictions, each on twice as many new connections at once as there are
    workers, until every worker answered some, and a few rounds more."""
    body = {"inputs": [_example(form)]}
    answered: set[int] = set()
    rounds_left = ROUNDS_AFTER_ALL_ANSWERED
    with ThreadPoolExecutor(2 * workers) as pool:
        for _ in range(MOST_ROUNDS):
            for pid, _, _ in pool.map(lambda _: _predict_once(url, body), range(2 * workers)):
                answered.add(pid)
            if len(answered) >= workers:
                rounds_left -= 1
                if rounds_left == 0:
                    return
    raise RuntimeError(f"only {len(answered)} of {workers} workers answered")


def _first_answers(url: str, form: str, workers: int) -> list[float]:
    """Each worker's first prediction's time, one prediction at a time on a new connection
    (the kernel hands each to one of the workers waiting) until every worker answered."""
    body = {"inputs": [_example(form)]}
    first: dict[int, float] = {}
    for _ in range(MOST_ROUNDS * workers):
        pid, _, took = _predict_once(url, body)
        first.setdefault(pid, took)
        if len(first) == workers:
            return sorted(first.values())
    raise RuntimeError(f"only {len(first)} of {workers} workers answered: {sorted(first)}")


def _plan_total_mib(config: Path, workers: int) -> float:
    """The total `loadonce plan CONFIG --workers N` predicts, in MiB."""
    done = subprocess.run(
        [sys.executable, "-m", "loadonce", "plan", str(config), "--workers", str(workers)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    match = re.search(r"= ([\d,.]+) MiB\n", done.stdout)
    if done.returncode not in (0, 1) or match is None:
        raise RuntimeError(f"loadonce plan failed ({done.returncode}): {done.stderr}")
    return float(match.group(1).replace(",", ""))


def _measure_memory(form: str, artifact: Path, workers: int, share: str) -> dict[str, float]:
    config = _config(form, artifact, workers=workers, share=share)
    with _serving(config) as server:
        ready_pss = _tree_pss(server.root)
        _traffic(server.url, form, workers)
        time.sleep(1)
        after = _tree_pss(server.root)
        ready_s, peak = server.ready_s, max(server.peak_pss, ready_pss)
    plan = _plan_total_mib(config, workers)
    return {
        "ready_s": ready_s,
        "peak_pss_mib": peak / 2**20,
        "ready_pss_mib": ready_pss / 2**20,
        "pss_mib": after / 2**20,
        "plan_mib": plan,
        "plan_ratio": plan / (after / 2**20),
    }


LOADINGS = ("one at a time", "as the plan allows", "all at once")


def _measure_startup(form: str, artifact: Path, loading: str) -> dict[str, Any]:
    """4 workers, each with its own copy of the weights, loading as ``loading`` says."""
    config = _config(form, artifact, workers=4, share="off", loading=loading, log_level="info")
    log = DIRECTORY / f"{config.stem}.log"
    with _serving(config, log) as server:
        ready_s, peak = server.ready_s, max(server.peak_pss, _tree_pss(server.root))
    text = log.read_text()
    loads = sorted(float(s) for s in re.findall(r"in worker pid \d+ in ([\d.]+) s", text))
    allowed = re.search(r"workers load (\d+) at a time.*the server at about ([\d,]+) MiB", text)
    return {
        "ready_s": ready_s,
        "peak_pss_mib": peak / 2**20,
        "load_s": loads,
        "at_once": int(allowed.group(1)) if allowed else None,
        "plan_startup_peak_mib": float(allowed.group(2).replace(",", "")) if allowed else None,
    }


def _drop_from_page_cache(path: Path) -> None:
    """As on a machine that never read the file (no process maps it now)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _measure_first_answers(form: str, artifact: Path, prefault: bool) -> dict[str, Any]:
    workers = 4
    config = _config(form, artifact, workers=workers, warmup=False, prefault=prefault)
    _drop_from_page_cache(artifact)
    with _serving(config) as server:
        first = _first_answers(server.url, form, workers)
        ready_s = server.ready_s
    return {
        "ready_s": ready_s,
        "first_answer_s": first,
        "median_first_answer_s": statistics.median(first),
        "slowest_first_answer_s": first[-1],
    }


def main() -> None:
    started = time.monotonic()
    paths = _artifacts()
    results: dict[str, Any] = {"cpu": _cpu_name(), "memory": {}, "first_answers": {}}
    for form, artifact in paths.items():
        runs = results["memory"].setdefault(form, {"artifact_mib": artifact.stat().st_size / 2**20})
        for share in ("mmap", "off"):
            for workers in (1, 4):
                measured = _measure_memory(form, artifact, workers, share)
                runs[f"{share}-{workers}"] = measured
                print(form, share, workers, measured, flush=True)
        for loading in LOADINGS:
            startup = _measure_startup(form, artifact, loading)
            results.setdefault("startup", {}).setdefault(form, {})[loading] = startup
            print(form, "startup", loading, startup, flush=True)
        for prefault in (True, False):
            answers = _measure_first_answers(form, artifact, prefault)
            results["first_answers"].setdefault(form, {})["on" if prefault else "off"] = answers
            print(form, "prefault", prefault, answers, flush=True)
    results["seconds"] = time.monotonic() - started
    (RESULTS / "memory.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "memory.md").write_text(render(results))
    print(render(results))


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def render(results: dict[str, Any]) -> str:
    lines = [
        f"CPU: {results['cpu']}; {results['seconds'] / 60:.1f} minutes",
        "",
        "| artifact | share | workers | ready after s | peak PSS while starting MiB | "
        "PSS when ready MiB | PSS after traffic MiB | 4 workers / 1 | plan MiB | plan / measured |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    targets = []
    for form, runs in results["memory"].items():
        for share in ("mmap", "off"):
            one, four = runs[f"{share}-1"], runs[f"{share}-4"]
            ratio = four["pss_mib"] / one["pss_mib"]
            for workers, run in ((1, one), (4, four)):
                lines.append(
                    f"| {form} ({runs['artifact_mib']:,.0f} MiB) | {share} | {workers} | "
                    f"{run['ready_s']:.1f} | {run['peak_pss_mib']:,.0f} | "
                    f"{run['ready_pss_mib']:,.0f} | {run['pss_mib']:,.0f} | "
                    f"{f'{ratio:.3f}' if workers == 4 else ''} | {run['plan_mib']:,.0f} | "
                    f"{run['plan_ratio']:.2f} |"
                )
            if share == "mmap":
                targets.append(
                    f"- {form}, 4 workers / 1 worker after traffic: {ratio:.3f} "
                    f"(target <= {RATIO_TARGET}): {_verdict(ratio <= RATIO_TARGET)}"
                )
            off_by = four["plan_ratio"] - 1
            targets.append(
                f"- {form}, share {share}: plan for 4 workers {four['plan_mib']:,.0f} MiB against "
                f"{four['pss_mib']:,.0f} MiB measured after traffic ({off_by:+.1%}; target "
                f"within {PLAN_TOLERANCE:.0%}): {_verdict(abs(off_by) <= PLAN_TOLERANCE)}"
            )
    lines += ["", "Targets:", *targets, ""]
    lines += [
        "First answer of each worker (4 workers, mapped weights, no warm-up, the artifact "
        "dropped from the page cache before starting):",
        "",
        "| artifact | prefault | ready after s | each worker's first answer s | slowest s |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for form, by_prefault in results["first_answers"].items():
        for prefault, run in by_prefault.items():
            each = ", ".join(f"{took:.2f}" for took in run["first_answer_s"])
            lines.append(
                f"| {form} | {prefault} | {run['ready_s']:.1f} | {each} | "
                f"{run['slowest_first_answer_s']:.2f} |"
            )
    lines += [
        "",
        'Startup of 4 workers with share = "off" (each reads its own copy):',
        "",
        "| artifact | loading | ready after s | peak PSS while starting MiB | each worker's load s "
        "| at once (plan) | plan's startup peak MiB |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for form, by_loading in results.get("startup", {}).items():
        for loading, run in by_loading.items():
            each = ", ".join(f"{took:.2f}" for took in run["load_s"])
            planned = run["plan_startup_peak_mib"]
            lines.append(
                f"| {form} | {loading} | {run['ready_s']:.1f} | {run['peak_pss_mib']:,.0f} | "
                f"{each} | {run['at_once'] or ''} | {f'{planned:,.0f}' if planned else ''} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
