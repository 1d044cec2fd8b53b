"""A loader's code that never returns, or that exits, is the load's failure, never the
server's: a reload whose load hung leaves a server SIGTERM stops (its abandoned thread kept
a one-worker server alive for good), and a loader's sys.exit at startup is one line naming
the model."""

from __future__ import annotations

import time
from pathlib import Path

import httpx2 as httpx

from tests.servers import run_cli, serving


def _config(tmp_path: Path, artifact: str, *, load_timeout_s: float = 1) -> Path:
    (tmp_path / "value.txt").write_text("1")
    (tmp_path / "never.txt").write_text("never")
    (tmp_path / "exit.txt").write_text("exit")
    config = tmp_path / "loadonce.toml"
    config.write_text(
        "[[models]]\n"
        'name = "m"\n'
        'loader = "tests.loaders:constant_or_never"\n'
        f'artifact = "{tmp_path / artifact}"\n'
        f"load_timeout_s = {load_timeout_s}\n"
    )
    return config


def test_sigterm_stops_a_server_after_a_reload_whose_load_hung(tmp_path: Path) -> None:
    config = _config(tmp_path, "value.txt")
    with serving([str(config)], tmp_path) as server:
        reload = httpx.post(
            f"{server.url}/admin/models/m/reload",
            json={"artifact": str(tmp_path / "never.txt")},
            timeout=30,
        )
        assert reload.status_code == 400
        assert "load_timeout_s" in reload.json()["error"]
        predicted = httpx.post(f"{server.url}/models/m/predict", json={"inputs": [0]})
        assert predicted.status_code == 200
        started = time.monotonic()
        server.process.terminate()
        assert server.process.wait(timeout=20) == 0
        assert time.monotonic() - started < 15


def test_a_loader_that_exits_fails_startup_in_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, "exit.txt")
    done = run_cli(tmp_path, "serve", str(config), "--port", "0", timeout=120)
    assert done.returncode == 3, done.stderr
    [line] = [line for line in done.stderr.splitlines() if "startup failed:" in line]
    assert "model 'm' failed to load" in line
    assert "SystemExit" in line
    assert "Traceback" not in done.stderr


def test_a_native_crash_while_loading_says_where_it_happened(tmp_path: Path) -> None:
    """One worker has no planning process to report a crash: the process ended on SIGSEGV
    with nothing but its INFO lines. Python's fault handler now names the signal and the
    frames (the loader, the runtime's load)."""
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "m"\nloader = "tests.loaders:segfaults_in_native_code"\n')
    done = run_cli(tmp_path, "serve", str(config), "--port", "0", timeout=120)
    assert done.returncode != 0
    assert "Segmentation fault" in done.stderr
    assert "segfaults_in_native_code" in done.stderr
