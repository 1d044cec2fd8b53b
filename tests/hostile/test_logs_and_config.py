"""What a client sends never forges a log line; an empty key list never opens a server; a
server reachable from the network without keys says so loudly."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx
import pytest

from loadonce.server.log_format import JsonFormatter, PlainFormatter
from tests.servers import REPO_ROOT, cli_env, serving

# Line breaks, then a right-to-left override and a zero-width space (the path would read
# otherwise than it is).
FORGED = "/x%0aERROR:%20forged%0d%0aWARNING:%20also%e2%80%a8forged%e2%80%aedesrever%e2%80%8b"


def test_a_path_cannot_forge_a_log_line_and_an_open_network_server_warns(tmp_path: Path) -> None:
    # Any model will do: one that needs no library starts in a fraction of the demo's time.
    with serving(["tests.loaders:echo", "--host", "0.0.0.0"], tmp_path) as server:
        assert httpx.get(server.url + FORGED).status_code == 404
        assert httpx.post(server.url + FORGED + "/predict", content=b"{").status_code in (404, 405)
        # Reached through 127.0.0.1 (a proxy on this machine): told how to pass its Host.
        proxied = httpx.get(server.url + "/models", headers={"Host": "api.example.com"})
        assert proxied.status_code == 403
        assert "allowed_hosts" in proxied.json()["error"]
    log = server.log()
    assert "SECURITY: listening on http://0.0.0.0" in log
    assert "arriving through a loopback address" in log
    assert "LOADONCE_ALLOWED_HOSTS" in log
    lines = log.splitlines()
    assert not [
        line for line in lines if line.lstrip().startswith(("ERROR: forged", "WARNING: also"))
    ]
    written = "/x\\x0aERROR: forged\\x0d\\x0aWARNING: also\\u2028forged\\u202edesrever\\u200b"
    assert any(written in line for line in lines)
    assert not [line for line in lines if "\u202e" in line or "\u200b" in line]


def test_a_models_exception_cannot_forge_a_log_line(tmp_path: Path) -> None:
    """Its message quotes the request; the traceback under the summary printed it raw."""
    forged = "x\nERROR:    [loadonce] forged admin login\u2028also"
    with serving(["tests.loaders:reflect"], tmp_path) as server:
        answer = httpx.post(f"{server.url}/models/reflect/predict", json={"inputs": [forged]})
        assert answer.status_code == 500
    lines = server.log().splitlines()
    assert not [line for line in lines if line.lstrip().startswith("ERROR:    [loadonce] forged")]
    assert not [line for line in lines if "\u2028" in line]
    assert any("cannot handle x\\x0aERROR:" in line for line in lines), lines


def test_every_message_in_a_traceback_is_one_line() -> None:
    try:
        try:
            raise RuntimeError("inner\nWARNING: forged cause")
        except RuntimeError as cause:
            failure = ValueError("outer\rERROR: forged")
            failure.add_note("note\nINFO: forged note")
            raise ExceptionGroup("group\nERROR: g", [failure]) from cause
    except ExceptionGroup:
        record = logging.LogRecord("loadonce", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    written = PlainFormatter("%(message)s").format(record)
    starts = [line.lstrip(" |+-") for line in written.splitlines()]
    assert not [line for line in starts if line.startswith(("WARNING: forged", "ERROR: ", "INFO:"))]
    for escaped in ("inner\\x0aWARNING", "outer\\x0dERROR", "note\\x0aINFO", "group\\x0aERROR"):
        assert escaped in written, written


@pytest.mark.parametrize("formatter", [PlainFormatter("%(message)s"), JsonFormatter()])
def test_every_log_format_writes_one_line_per_record(formatter: logging.Formatter) -> None:
    record = logging.LogRecord("loadonce", logging.ERROR, __file__, 1, "got %s", ("a\nb\rc",), None)
    written = formatter.format(record)
    assert "\n" not in written
    assert "\r" not in written
    text = json.loads(written)["message"] if isinstance(formatter, JsonFormatter) else written
    assert text == "got a\\x0ab\\x0dc"
    # A message's own last line break ends nothing: it is left out, not written escaped
    # (uvicorn's "Exception in ASGI application\n").
    ending = logging.LogRecord("uvicorn", logging.ERROR, __file__, 1, "failed\n", (), None)
    written = formatter.format(ending)
    text = json.loads(written)["message"] if isinstance(formatter, JsonFormatter) else written
    assert text == "failed"


@pytest.mark.parametrize("variable", ["LOADONCE_API_KEYS", "LOADONCE_ADMIN_API_KEYS"])
@pytest.mark.parametrize("value", ["", ",", " , "])
def test_an_empty_key_list_is_a_configuration_error(
    tmp_path: Path, variable: str, value: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadonce", "serve", "--demo", "--port", "0"],
        env=cli_env(tmp_path, {variable: value}),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{variable} is set but holds no value" in result.stderr
