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
from tests.servers import REPO_ROOT, cli_env, serving, wait_until

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


# One request each, of what a client may send within the server's limits (its head, its body):
# a path of 30,000 characters, most of them line breaks (each written as a 4-character escape),
# and an input of 1 MB the model's exception quotes (its traceback's message).
_LARGE_REQUESTS = {
    "a long path": ("GET", "/" + "%0a" * 5_000 + "p" * 15_000, None),
    "an exception quoting a large input": (
        "POST",
        "/models/reflect/predict",
        {"inputs": ["\n" + "A" * 1_000_000]},
    ),
}
# Each request's log, whatever it sent: its access line, and its error with the traceback.
_MOST_LOG_BYTES_PER_REQUEST = 16_000


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_one_request_writes_a_bounded_amount_of_log(tmp_path: Path, log_format: str) -> None:
    """A 30 KB path wrote a 40 KB access line (80 KB in JSON, which has it twice), and a
    model's exception quoting a 1 MB input a 1 MB traceback: per request, from any client."""
    with serving(["tests.loaders:reflect", "--log-format", log_format], tmp_path) as server:
        for what, (method, path, body) in _LARGE_REQUESTS.items():
            before = len(server.log().encode())
            request_id = f"large-{what.replace(' ', '-')}"
            headers = {"X-Request-ID": request_id}
            answer = httpx.request(method, server.url + path, json=body, headers=headers)
            assert answer.status_code in (404, 500), what
            wait_until(lambda rid=request_id: rid in server.log(), 10, "its access line")
            written = server.log().encode()[before:]
            assert len(written) < _MOST_LOG_BYTES_PER_REQUEST, (what, len(written))
            assert b"characters in all)" in written, what  # the cut says so
    lines = server.log().splitlines()
    assert not [line for line in lines if line.lstrip().startswith("AAAA")]


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


_LARGE_TEXTS = {
    "a long message": "A" * 1_000_000,
    "line breaks": "\n" * 200_000,
    "invisible characters": "\u202e" * 200_000,
}


@pytest.mark.parametrize("formatter", [PlainFormatter("%(message)s"), JsonFormatter()])
@pytest.mark.parametrize("text", _LARGE_TEXTS.values(), ids=_LARGE_TEXTS.keys())
def test_a_tracebacks_messages_are_cut_in_every_log_format(
    formatter: logging.Formatter, text: str
) -> None:
    """A model's exception quoting the request, its cause's and its note: each message cut
    (escapes included), whatever the request held."""
    try:
        try:
            raise RuntimeError(text)
        except RuntimeError as cause:
            failure = ValueError(text)
            failure.add_note(text)
            raise failure from cause
    except ValueError:
        record = logging.LogRecord("loadonce", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    written = formatter.format(record)
    assert len(written) < 12_000, len(written)
    assert written.count("characters in all)") == 3, written[-3000:]


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
