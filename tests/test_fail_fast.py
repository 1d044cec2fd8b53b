"""A model that cannot load stops the server: non-zero exit, one clear line, no connection."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from tests.servers import ConnectionProbe, cli_env, free_port, start_cli

STARTUP_FAILED = 3


def _run_to_exit(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> str:
    port = free_port()
    with ConnectionProbe(port) as probe:
        server = start_cli([*args, "--port", str(port)], tmp_path, env=env, port=port)
        code = server.process.wait(timeout=60)
    log = server.log()
    assert code == STARTUP_FAILED, log
    assert probe.attempts > 5, "the port was probed while the server started"
    assert probe.accepted == 0, "the port never accepted a connection"
    assert "Traceback" not in log
    return log


@pytest.mark.parametrize("workers", ["1", "2"])
def test_corrupt_artifact_exits_non_zero_naming_model_and_path(
    tmp_path: Path, workers: str
) -> None:
    artifact = tmp_path / "broken.skops"
    artifact.write_bytes(b"this is not a model")
    config = tmp_path / "loadonce.toml"
    config.write_text(f'[[models]]\nname = "broken"\nartifact = "{artifact.name}"\n')
    started = time.monotonic()
    log = _run_to_exit([str(config), "--workers", workers], tmp_path)
    assert time.monotonic() - started < 60
    [line] = [line for line in log.splitlines() if "[loadonce] startup failed:" in line]
    assert "model 'broken'" in line
    assert str(artifact) in line
    assert "BadZipFile" in line
    assert log.count("[loadonce] startup failed:") == 1, "one line, not one per worker"


def test_missing_artifact_is_named(tmp_path: Path) -> None:
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "gone"\nartifact = "gone.skops"\n')
    log = _run_to_exit([str(config)], tmp_path)
    assert f"model 'gone' failed to load from {tmp_path / 'gone.skops'}" in log
    assert "no such file" in log


@pytest.mark.parametrize("loop", ["itself", "two links"])
def test_an_artifact_that_is_a_link_loop_is_named_in_one_line(tmp_path: Path, loop: str) -> None:
    """Path.resolve raised on the loop while the config file was read: a traceback."""
    artifact = tmp_path / "m.skops"
    if loop == "itself":
        artifact.symlink_to(artifact)
    else:
        artifact.symlink_to(tmp_path / "other.skops")
        (tmp_path / "other.skops").symlink_to(artifact)
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "m"\nartifact = "m.skops"\n')
    log = _run_to_exit([str(config)], tmp_path)
    assert f"model 'm' failed to load from {artifact}" in log
    assert "symbolic link to no file" in log


def test_one_failing_worker_brings_the_whole_server_down(tmp_path: Path) -> None:
    config = tmp_path / "loadonce.toml"
    config.write_text(
        '[[models]]\nname = "flaky"\nloader = "tests.loaders:fails_in_second_worker"\n'
    )
    load_log = tmp_path / "loads.txt"
    env = cli_env(
        tmp_path,
        {"LOADER_TEST_MARKER": str(tmp_path / "marker"), "LOADER_TEST_LOAD_LOG": str(load_log)},
    )
    log = _run_to_exit([str(config), "--workers", "2"], tmp_path, env=env)
    assert "model 'flaky' failed to load from tests.loaders:fails_in_second_worker" in log
    assert "built to fail" in log
    # The healthy worker loaded, then was stopped with the rest: no half-up server.
    [healthy_pid] = [int(pid) for pid in load_log.read_text().split()]
    with pytest.raises(ProcessLookupError):
        os.kill(healthy_pid, 0)
    assert "replacement" not in log, "no restart loop"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_fails_before_any_model_loads(tmp_path: Path, workers: str) -> None:
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "echo"\nloader = "tests.loaders:counting_echo"\n')
    load_log = tmp_path / "loads.txt"
    env = cli_env(tmp_path, {"LOADER_TEST_LOAD_LOG": str(load_log)})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_cli(
            [str(config), "--workers", workers, "--port", str(port)], tmp_path, env=env, port=port
        )
        assert server.process.wait(timeout=60) == STARTUP_FAILED
    assert f"startup failed: cannot bind 127.0.0.1:{port}" in server.log()
    assert not load_log.exists(), "no model was loaded for a server that cannot bind"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_grpc_port_fails_before_any_model_loads(tmp_path: Path, workers: str) -> None:
    """Workers bind the gRPC port once loaded (SO_REUSEPORT, to share it): a taken one failed
    after the whole load, and with two workers every replacement failed in turn, reloading
    every model, for good. Another server binding with SO_REUSEPORT too (a second loadonce)
    shared the port, the kernel splitting calls between the two servers."""
    config = tmp_path / "loadonce.toml"
    config.write_text('[[models]]\nname = "echo"\nloader = "tests.loaders:counting_echo"\n')
    load_log = tmp_path / "loads.txt"
    env = cli_env(tmp_path, {"LOADER_TEST_LOAD_LOG": str(load_log)})
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as another loadonce
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        grpc_port = taken.getsockname()[1]
        server = start_cli(
            [str(config), "--workers", workers, "--grpc-port", str(grpc_port)], tmp_path, env=env
        )
        try:
            assert server.process.wait(timeout=60) == STARTUP_FAILED
        finally:
            server.process.kill()  # and its workers, through their pipes, if it ran on
    assert f"startup failed: cannot bind 127.0.0.1:{grpc_port} for gRPC" in server.log()
    assert not load_log.exists(), "no model was loaded for a server that cannot bind"


def test_a_load_that_crashes_the_process_is_one_line_too(tmp_path: Path) -> None:
    """No Python exception to report (a library's C code aborted): the line says how the
    planning process ended (its exit code read too early said None) and what to suspect."""
    log = _run_to_exit(["tests.loaders:crashes_in_native_code", "--workers", "2"], tmp_path)
    [line] = [line for line in log.splitlines() if "[loadonce] startup failed:" in line]
    assert "the planning process was killed by SIGABRT while loading the models" in line


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_load_past_its_timeout_stops_the_server_at_once(tmp_path: Path, workers: str) -> None:
    """The abandoned load runs on in its thread; exiting waited for it, for good."""
    config = tmp_path / "loadonce.toml"
    config.write_text(
        '[[models]]\nname = "stuck"\nloader = "tests.loaders:hangs_at_load"\nload_timeout_s = 1\n'
    )
    started = time.monotonic()
    log = _run_to_exit([str(config), "--workers", workers], tmp_path)
    assert time.monotonic() - started < 30
    [line] = [line for line in log.splitlines() if "[loadonce] startup failed:" in line]
    assert "did not finish within load_timeout_s (1 s)" in line
