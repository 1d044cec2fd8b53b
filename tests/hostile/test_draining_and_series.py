"""A stopping worker is seen leaving by its readiness probe before its listener closes; reloads
do not add metric series forever."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest

import loadonce
from tests.servers import ThreadedServer, cli_env, serving, stop


def test_readiness_says_draining_before_the_listener_closes(tmp_path: Path) -> None:
    env = cli_env(tmp_path, {"LOADONCE_STOP_DELAY_S": "1.5"})
    # Any model will do: one that needs no library starts in a fraction of the demo's time.
    with serving(["tests.loaders:echo"], tmp_path, env=env) as server:
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["draining"] is True
        # Still serving meanwhile: a request routed here before the probe noticed is answered.
        predicted = httpx.post(f"{server.url}/models/echo/predict", json={"inputs": [1]})
        assert predicted.status_code == 200
        started = time.monotonic()
        assert stop(server) == 0
        assert time.monotonic() - started < 10


def _in_flight(url: str) -> tuple[threading.Thread, list[httpx.Response]]:
    """A prediction sent from a thread (the model takes $LOADER_TEST_DELAY seconds); its
    answer lands in the list."""
    answers: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{url}/models/slow_echo/predict", json={"inputs": [1]}, timeout=30)
        )
    )
    thread.start()
    return thread, answers


def test_once_workers_stop_accepting_new_connections_are_refused(tmp_path: Path) -> None:
    """With workers, the supervisor held the shared listening socket open: after the workers
    closed theirs, the kernel still accepted connections, which hung until the drain ended."""
    env = cli_env(
        tmp_path,
        {"LOADONCE_STOP_DELAY_S": "0.5", "LOADER_TEST_DELAY": "4", "LOADONCE_WORKERS": "2"},
    )
    with serving(["tests.loaders:slow_echo"], tmp_path, env=env) as server:
        in_flight, answers = _in_flight(server.url)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.5)  # past the stop delay: every worker's listener closed
        started = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/livez", timeout=10)
        assert time.monotonic() - started < 2
        in_flight.join(30)
        assert [a.status_code for a in answers] == [200], "the request in flight finished"
        assert stop(server) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_hangup_stops_the_server_as_sigterm_does(tmp_path: Path, workers: str) -> None:
    """A closed terminal or ssh session (SIGHUP) killed the server at once (status 129): the
    request in flight got no answer, and its temporary directories stayed behind."""
    env = cli_env(
        tmp_path,
        {"LOADONCE_STOP_DELAY_S": "0", "LOADER_TEST_DELAY": "1", "LOADONCE_WORKERS": workers},
    )
    with serving(["tests.loaders:slow_echo"], tmp_path, env=env) as server:
        in_flight, answers = _in_flight(server.url)
        time.sleep(0.4)
        server.process.send_signal(signal.SIGHUP)
        in_flight.join(30)
        assert server.process.wait(timeout=30) == 0
    assert [a.status_code for a in answers] == [200], "the request in flight finished"


def test_a_request_the_drain_cuts_off_is_a_503_not_a_traceback(tmp_path: Path) -> None:
    """uvicorn cancels what still runs when drain_timeout_s ends: it logged the cancellation's
    traceback and answered 500, as if the server had failed."""
    env = cli_env(
        tmp_path,
        {
            "LOADONCE_STOP_DELAY_S": "0.3",
            "LOADONCE_DRAIN_TIMEOUT_S": "1",
            "LOADER_TEST_DELAY": "6",
        },
    )
    with serving(["tests.loaders:slow_echo"], tmp_path, env=env) as server:
        in_flight, answers = _in_flight(server.url)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        in_flight.join(30)
        assert stop(server) == 0
    [answer] = answers
    assert answer.status_code == 503, answer.text
    assert "drain timeout ended" in answer.json()["error"]
    assert "Traceback" not in server.log()


def test_a_stream_the_drain_cuts_off_ends_with_an_error_event_not_mid_body(
    tmp_path: Path,
) -> None:
    """uvicorn cancels a stream still running when drain_timeout_s ends: its body was cut
    mid-stream (httpx: "incomplete chunked read"), logged as the client's 499 with the
    cancellation's traceback. Its last event now says the server stopped, as a 503."""
    env = cli_env(tmp_path, {"LOADONCE_STOP_DELAY_S": "0.3", "LOADONCE_DRAIN_TIMEOUT_S": "1"})
    with serving(["tests.loaders:slow_writer"], tmp_path, env=env) as server:
        with httpx.stream(
            "POST", f"{server.url}/models/slow_writer/generate",
            json={"prompt": "x", "stream": True}, timeout=30,
        ) as answer:  # fmt: skip
            lines = answer.iter_lines()
            assert next(lines).startswith("data: ")  # streaming: now the drain begins
            server.process.send_signal(signal.SIGTERM)
            events = [line for line in lines if line.startswith("data: ")]  # read whole
        assert stop(server) == 0
    assert "drain timeout ended" in events[-1], events[-1]
    log = server.log()
    assert "Traceback" not in log
    assert " 503 " in next(line for line in log.splitlines() if "/models/slow_writer" in line)


def _series(metrics: str, name: str) -> list[str]:
    return [line for line in metrics.splitlines() if line.startswith(name + "{")]


def test_reloads_retire_the_old_versions_series_in_one_process(tmp_path: Path) -> None:
    artifact = tmp_path / "value.txt"
    artifact.write_text("1")
    spec = loadonce.ModelSpec(
        name="m", loader="tests.loaders:constant_from_file", artifact=artifact
    )
    # Five reloads: unretired series would already be six times too many. (Each reload in
    # this process thaws and collects every object pytest holds: a fraction of a second.)
    with ThreadedServer(loadonce.create_app([spec])) as server:
        for version in range(2, 7):
            reloaded = httpx.post(
                f"{server.url}/admin/models/m/reload", json={"version": str(version)}
            )
            assert reloaded.status_code == 200, reloaded.text
        metrics = httpx.get(f"{server.url}/metrics").text
    states = _series(metrics, "loadonce_model_state")
    assert len(states) == 6, states  # one per state, of the version served now
    assert all('version="6"' in line for line in states)
    assert len(_series(metrics, "loadonce_model_load_seconds")) == 1


def test_reloads_retire_the_old_versions_series_across_workers(tmp_path: Path) -> None:
    artifact = tmp_path / "value.txt"
    artifact.write_text("1")
    config = tmp_path / "loadonce.toml"
    config.write_text(
        f"""
[server]
workers = 2

[[models]]
name = "m"
loader = "tests.loaders:constant_from_file"
artifact = "{artifact}"
"""
    )
    with serving([str(config)], tmp_path, env=cli_env(tmp_path)) as server:
        for version in range(2, 12):
            reloaded = httpx.post(
                f"{server.url}/admin/models/m/reload", json={"version": str(version)}, timeout=60
            )
            assert reloaded.status_code == 200, reloaded.text
        metrics = httpx.get(f"{server.url}/metrics").text
        listed = httpx.get(f"{server.url}/models").json()["models"][0]["workers"]
    states = _series(metrics, "loadonce_model_state")
    assert len(states) == 12, states  # 6 states x 2 workers, all of version 11
    assert all('version="11"' in line for line in states)
    assert {worker["version"] for worker in listed} == {"11"}
