"""Each request's id: in the response header, in error bodies, and in its log line."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

import loadonce
from tests.servers import cli_env, serving, wait_until


def test_json_logs_carry_each_requests_id(tmp_path: Path) -> None:
    with serving(["--demo", "--log-format", "json"], tmp_path, env=cli_env(tmp_path)) as server:
        chosen = httpx.post(
            f"{server.url}/models/iris/predict",
            json={"inputs": [5.1, 3.5, 1.4, 0.2]},
            headers={"X-Request-ID": "client-id-42"},
        )
        assert chosen.headers["x-request-id"] == "client-id-42"
        failed = httpx.post(f"{server.url}/models/iris/predict", json={"inputs": [1, 2]})
        generated = failed.headers["x-request-id"]
        assert failed.json()["request_id"] == generated
        unknown = httpx.get(f"{server.url}/no/such/page")
        assert unknown.status_code == 404
        assert unknown.headers["x-request-id"]
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert lines, server.log()
    assert all({"time", "level", "logger", "pid", "message"} <= set(line) for line in lines)
    requests = {line["request_id"]: line for line in lines if line["logger"] == "loadonce.access"}
    assert requests["client-id-42"]["status"] == 200
    assert requests["client-id-42"]["path"] == "/models/iris/predict"
    assert requests[generated]["status"] == 400
    assert requests[unknown.headers["x-request-id"]]["status"] == 404
    assert any("loaded in worker pid" in line["message"] for line in lines)


def test_plain_logs_name_the_request_id(tmp_path: Path) -> None:
    # Any model will do: one that needs no library starts in a fraction of the demo's time.
    with serving(["tests.loaders:echo"], tmp_path, env=cli_env(tmp_path)) as server:
        httpx.get(f"{server.url}/models", headers={"X-Request-ID": "plain-id-7"})
    assert "GET /models 200" in server.log()
    assert "request_id=plain-id-7" in server.log()


def test_every_requests_line_is_written_while_serving_and_at_exit(tmp_path: Path) -> None:
    # The lines are buffered (one write per tenth of a second, not one per line): they appear
    # while the server runs, and none is lost when it stops.
    with serving(["tests.loaders:echo"], tmp_path, env=cli_env(tmp_path)) as server:
        with httpx.Client() as client:
            for index in range(300):
                client.get(f"{server.url}/models", headers={"X-Request-ID": f"burst-{index}"})
        wait_until(lambda: "request_id=burst-0" in server.log(), 5, "the first lines to appear")
    written = [line for line in server.log().splitlines() if "request_id=burst-" in line]
    assert [line.rsplit("request_id=burst-", 1)[1] for line in written] == [
        str(index) for index in range(300)
    ]


# X-Request-ID headers a client may send, and the id answered (None: a new one of the server's).
_SENT_IDS = [
    ("plain", [("X-Request-ID", "client-id_1.2:3")], "client-id_1.2:3"),
    ("the longest", [("X-Request-ID", "a" * 128)], "a" * 128),
    ("too long", [("X-Request-ID", "a" * 129)], None),
    ("a space", [("X-Request-ID", "a b")], None),
    ("markup", [("X-Request-ID", "<script>")], None),
    ("empty", [("X-Request-ID", "")], None),
    ("two", [("X-Request-ID", "first"), ("X-Request-ID", "second")], None),
    ("two, one bad", [("X-Request-ID", "good"), ("X-Request-ID", "bad id")], None),
]


@pytest.fixture(scope="module")
def echo_client() -> Iterator[TestClient]:
    spec = loadonce.ModelSpec(name="echo", loader="tests.loaders:echo")
    with TestClient(loadonce.create_app([spec])) as client:
        yield client


@pytest.mark.parametrize(
    ("headers", "echoed"), [case[1:] for case in _SENT_IDS], ids=[case[0] for case in _SENT_IDS]
)
@pytest.mark.parametrize("path", ["/models", "/no/such/page"])
def test_a_clients_id_is_answered_only_if_it_is_one_short_plain_id(
    echo_client: TestClient, headers: list[tuple[str, str]], echoed: str | None, path: str
) -> None:
    """Of two ids, the first was answered (and logged): a client's won over one a proxy
    appended after it. Neither is the request's one id: it gets a new one."""
    answer = echo_client.get(path, headers=headers)
    answered = answer.headers.get_list("x-request-id")
    assert len(answered) == 1
    if echoed is not None:
        assert answered == [echoed]
    else:
        assert re.fullmatch("[0-9a-f]{32}", answered[0]), answered
    if answer.status_code == 404:
        assert answer.json()["request_id"] == answered[0]
