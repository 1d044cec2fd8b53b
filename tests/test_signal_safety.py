"""A stop signal can arrive between any two bytecodes of the serving thread, even while that
thread writes the log: the server still stops, and no line is lost (a worker once hung for
good on SIGTERM, its signal handler waiting for the log's lock its own thread held)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.servers import cli_env, serving, stop

# Logs from a signal handler every 200 µs while the main thread logs plain lines and request
# lines through the server's own logging configuration, for a second and a half.
_LOGS_WHILE_SIGNALLED = """
import logging, logging.config, signal, sys, time
from loadonce.http.request_line import write_request_line
from loadonce.server.log_format import log_config

logging.config.dictConfig(log_config("info", sys.argv[1]))
log = logging.getLogger("loadonce")
from_signals = 0

def on_alarm(signum, frame):
    global from_signals
    from_signals += 1
    # A warning is written at once: the handler takes the write path, not only the buffer.
    log.warning("from signal %d", from_signals)

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
lines = 0
started = time.monotonic()
while time.monotonic() - started < 1.5:
    lines += 1
    log.info("from the loop %d", lines)
    write_request_line("GET", f"/request/{lines}", 200, 1.0, f"id-{lines}")
signal.setitimer(signal.ITIMER_REAL, 0)
logging.shutdown()
print(lines, from_signals)
"""


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_lines_logged_by_a_signal_handler_mid_write_are_written_and_nothing_waits(
    log_format: str,
) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(_LOGS_WHILE_SIGNALLED), log_format],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("logging from a signal handler deadlocked the process") from None
    assert done.returncode == 0, done.stderr[-2000:]
    lines, from_signals = (int(number) for number in done.stdout.split())
    assert from_signals > 100, "the handler hardly ran: the test proved nothing"
    log = done.stderr
    # Every line exactly once, each kind in the order it was logged.
    assert _numbers(r"from the loop (\d+)", log) == list(range(1, lines + 1))
    assert _numbers(r"GET /request/(\d+) 200", log) == list(range(1, lines + 1))
    # (A handler can itself be interrupted by the next signal between its count and its line:
    # their lines need not come in the count's order.)
    assert sorted(_numbers(r"from signal (\d+)", log)) == list(range(1, from_signals + 1))


def _numbers(pattern: str, log: str) -> list[int]:
    return [int(found) for found in re.findall(pattern, log)]


@pytest.mark.parametrize("stop_delay_s", ["0", "0.3"])
def test_sigterm_under_traffic_stops_the_server_and_loses_no_answered_request(
    tmp_path: Path, stop_delay_s: str
) -> None:
    env = cli_env(tmp_path, {"LOADONCE_STOP_DELAY_S": stop_delay_s})
    answered: list[str] = []
    failed: list[str] = []
    sending = threading.Event()
    sending.set()
    with serving(["tests.loaders:echo"], tmp_path, env=env) as server:

        def client(number: int) -> None:
            with httpx.Client(timeout=10) as http:
                sent = 0
                while sending.is_set():
                    sent += 1
                    request_id = f"c{number}-{sent}"
                    try:
                        answer = http.post(
                            f"{server.url}/models/echo/predict",
                            json={"inputs": [sent]},
                            headers={"X-Request-ID": request_id},
                        )
                    except httpx.TransportError:
                        return  # the listener closed: a stopping server's right
                    if answer.status_code == 200:
                        answered.append(request_id)
                    else:
                        failed.append(f"{answer.status_code} {answer.text}")

        clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in clients:
            thread.start()
        time.sleep(0.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = stop(server)
        took = time.monotonic() - started
        sending.clear()
        for thread in clients:
            thread.join(30)
    assert code == 0
    assert took < 10
    assert answered, "no request was answered before the stop: the test proved nothing"
    # Draining answers what it accepted; a request refused meanwhile says why, never 5xx.
    assert not [line for line in failed if line.startswith("5")], failed[:3]
    log = server.log()
    assert "stopping" in log
    missing = [request_id for request_id in answered if f"request_id={request_id}" not in log]
    assert not missing, f"{len(missing)} answered requests not in the log, e.g. {missing[:3]}"
