"""A request's log line written from its data (server mode's own handler) is the very text its
record would have given, and anything in the logging configuration that could change or drop a
record (a filter, a record factory of the user's) still gets the record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from loadonce.http.request_line import RequestLine, write_request_line
from loadonce.server.log_format import JsonFormatter, PlainFormatter, log_config
from tests.servers import run_python

_LINES = [
    RequestLine(1_790_000_000.1234, "POST", "/models/iris/predict", 200, 0.4321, "a" * 32),
    # A path the middleware made log-safe (escapes are plain text) and a slow request.
    RequestLine(1_790_000_001.0, "GET", "/x\\x0aERROR:forged", 404, 12_345.678, "client-id-42"),
    RequestLine(
        1_790_000_002.5, "POST", "/v2/models/m/infer", 503, 1.0, "id-3", "ab" * 16, "cd" * 8
    ),
    # Times whose microseconds round up into the next millisecond, and the next second.
    RequestLine(1_790_000_003.0004996, "GET", "/", 200, 0.0, "id-4"),
    RequestLine(1_790_000_003.9999996, "GET", "/", 200, 0.0, "id-5"),
]


def _server_formatters() -> list[logging.Formatter]:
    """The formatters ``loadonce serve`` gives its own lines, plain (with and without
    colours) and JSON."""
    plain = log_config("info", "plain")["formatters"]["loadonce"]["fmt"]
    return [
        PlainFormatter(plain, use_colors=False),
        PlainFormatter(plain, use_colors=True),
        JsonFormatter(),
    ]


@pytest.mark.parametrize("formatter", _server_formatters())
@pytest.mark.parametrize("line", _LINES)
def test_a_line_from_its_data_is_the_text_of_its_record(
    formatter: PlainFormatter | JsonFormatter, line: RequestLine
) -> None:
    record = line.record()
    record.created = line.created
    if line.trace_id is not None:  # as tracing's record factory sets them
        record.trace_id, record.span_id = line.trace_id, line.span_id
    assert formatter.takes_request_lines()
    assert formatter.format_request_line(line) == formatter.format(record)


def test_a_format_naming_more_than_the_line_gets_records() -> None:
    assert not PlainFormatter("%(asctime)s %(levelprefix)s %(message)s").takes_request_lines()


# A server's logging, and requests through loadonce's app; what reaches standard error.
_SCRIPT = """
import logging, logging.config, sys
from starlette.testclient import TestClient
import loadonce
from loadonce.server.log_format import log_config

log_format, change = sys.argv[1], sys.argv[2]
logging.config.dictConfig(log_config("info", log_format))
if change == "filter":
    class Redact(logging.Filter):
        def filter(self, record):
            record.args = (*record.args[:-1], "redacted")
            record.request_id = "redacted"
            return True
    logging.getLogger("loadonce.access").addFilter(Redact())
elif change == "factory":
    previous = logging.getLogRecordFactory()
    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        record.trace_id, record.span_id = "from-the-factory", "0"
        return record
    logging.setLogRecordFactory(factory)
spec = loadonce.ModelSpec(name="echo", loader="tests.loaders:echo")
with TestClient(loadonce.create_app([spec])) as client:
    for index in range(3):
        client.get("/models", headers={"X-Request-ID": f"id-{index}"})
    client.get("/models%0aINFO:%20forged")  # a path that would start a line of its own
logging.shutdown()
"""


def _access_lines(
    tmp_path: Path, log_format: str, change: str, *, forged: bool = False
) -> list[str]:
    """The request lines of the three GET /models (or, ``forged``, of the hostile path)."""
    done = run_python(tmp_path, _SCRIPT, log_format, change)
    assert done.returncode == 0, done.stderr
    assert not any(line.startswith("INFO: forged") for line in done.stderr.splitlines())
    lines = [line for line in done.stderr.splitlines() if "GET /models" in line]
    return [line for line in lines if ("forged" in line) == forged]


def test_server_lines_come_in_order_and_a_filter_still_sees_each_record(tmp_path: Path) -> None:
    plain = _access_lines(tmp_path, "plain", "none")
    assert [line.rsplit("request_id=", 1)[1] for line in plain] == ["id-0", "id-1", "id-2"]
    assert all(line.startswith("INFO:     [loadonce] GET /models 200 ") for line in plain)
    filtered = _access_lines(tmp_path, "plain", "filter")
    assert [line.rsplit("request_id=", 1)[1] for line in filtered] == ["redacted"] * 3


def test_a_record_factory_of_the_users_still_makes_each_record(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in _access_lines(tmp_path, "json", "factory")]
    assert [line["request_id"] for line in lines] == ["id-0", "id-1", "id-2"]
    assert {line["trace_id"] for line in lines} == {"from-the-factory"}
    plain = [json.loads(line) for line in _access_lines(tmp_path, "json", "none")]
    assert [line["request_id"] for line in plain] == ["id-0", "id-1", "id-2"]
    assert not any("trace_id" in line for line in plain)


def test_a_path_the_client_sent_is_made_log_safe_whichever_way_its_line_takes(
    tmp_path: Path,
) -> None:
    # As data, the path is made log-safe when the line is formatted; as a record, before.
    escaped = "/models\\x0aINFO: forged"
    for change in ("none", "filter"):
        (plain,) = _access_lines(tmp_path, "plain", change, forged=True)
        assert f"GET {escaped} 404 " in plain
    (line,) = [json.loads(line) for line in _access_lines(tmp_path, "json", "none", forged=True)]
    assert line["path"] == escaped
    assert line["status"] == 404


_LONG_PATHS = {
    "plain characters": "/" + "p" * 30_000,
    "line breaks": "/" + "\n" * 30_000,
    "invisible characters": "/" + "\u202e" * 30_000,
}


@pytest.mark.parametrize("path", _LONG_PATHS.values(), ids=_LONG_PATHS.keys())
def test_a_long_path_is_cut_in_its_record_too(path: str, caplog: pytest.LogCaptureFixture) -> None:
    """A handler of the user's (here caplog's) gets the record, whose path was escaped
    whole: a 30,000-character path made a line of up to 300,000."""
    caplog.set_level(logging.INFO, "loadonce.access")
    write_request_line("GET", path, 404, 1.0, "id-long")
    (record,) = caplog.records
    assert len(record.getMessage()) < 2_200
    assert record.path.endswith("... (cut: 30,001 characters in all)")  # type: ignore[attr-defined]


_A_LIBRARYS_WARNING = """
import logging, logging.config, sys
from loadonce.server.log_format import log_config

logging.config.dictConfig(log_config("info", sys.argv[1]))
# What OpenTelemetry's propagator logs of a client's tracestate (a U+0085 in it), and an
# exporter's failure: a library's records, not loadonce's.
logging.getLogger("opentelemetry.trace.span").warning(
    "Member doesn't match: x\\x85ERROR:    [loadonce] forged admin key accepted"
)
logging.getLogger("some.library").error("export failed")
logging.getLogger("some.library").info("chatter below warning")
logging.shutdown()
"""


@pytest.mark.parametrize("log_format", ["plain", "json"])
def test_a_librarys_records_are_written_as_loadonces_are(tmp_path: Path, log_format: str) -> None:
    # With no handler on the root logger, Python's last resort printed them raw: a client's
    # U+0085 made a line of its own, and JSON logs got lines that were not JSON.
    written = run_python(tmp_path, _A_LIBRARYS_WARNING, log_format)
    assert written.returncode == 0, written.stderr
    lines = written.stderr.splitlines()  # splitlines breaks at U+0085 too
    assert len(lines) == 2, lines
    assert "forged admin key accepted" in lines[0]
    assert "chatter" not in written.stderr
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        assert [r["logger"] for r in records] == ["opentelemetry.trace.span", "some.library"]
    else:
        assert lines[0].startswith("WARNING:")
        assert lines[1].startswith("ERROR:")
