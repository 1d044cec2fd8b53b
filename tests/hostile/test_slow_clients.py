"""Slow and oversized requests against a real `loadonce serve`: a stalled head or body is cut
off, an oversized head is refused, and open connections are capped per worker."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.servers import CliServer, cli_env, serving, wait_until


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    tmp_path: Path = tmp_path_factory.mktemp("slow-clients")
    env = cli_env(
        tmp_path,
        {
            "LOADONCE_HEADER_TIMEOUT_S": "1",
            "LOADONCE_BODY_TIMEOUT_S": "1",
            "LOADONCE_MAX_CONNECTIONS": "20",
        },
    )
    # Any model will do: one that needs no library starts in a fraction of the demo's time.
    with serving(["tests.loaders:echo"], tmp_path, env=env) as running:
        yield running


def _connect(server: CliServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_a_request_head_that_never_ends_is_cut_off(server: CliServer) -> None:
    stalled = [_connect(server) for _ in range(50)]
    for sock in stalled:
        sock.sendall(b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    started = time.monotonic()
    answers = [_answer(sock) for sock in stalled]
    assert time.monotonic() - started < 5
    for sock in stalled:
        sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[0]
    _wait_until_served(server)
    _refusal_logged(server, answers[0], 408)


def test_a_body_that_stops_arriving_is_abandoned(server: CliServer) -> None:
    sock = _connect(server)
    sock.sendall(
        b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"inputs": '
    )
    started = time.monotonic()
    _answer(sock)
    sock.close()
    assert time.monotonic() - started < 5
    # Counted as the client's doing (499, nginx's "client closed request"), not as a 500.
    wait_until(
        lambda: 'status="499"' in httpx.get(f"{server.url}/metrics").text, 5, "a 499 counted"
    )
    assert 'status="500"' not in httpx.get(f"{server.url}/metrics").text


def test_a_body_that_trickles_is_abandoned(server: CliServer) -> None:
    """A byte every quarter second never pauses for body_timeout_s (1 s here), but the
    whole body's allowance (1 s, plus 1 s per KiB sent) runs out: it held a connection for as
    long as the client liked."""
    sock = _connect(server)
    sock.sendall(
        b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 8 and not closed:
        try:
            sock.sendall(b" ")
            time.sleep(0.25)
        except OSError:
            closed = True
        else:
            sock.settimeout(0.01)
            with contextlib.suppress(TimeoutError):
                closed = sock.recv(1) == b""
            sock.settimeout(10)
    sock.close()
    assert closed, "the trickling body kept its connection"
    assert time.monotonic() - started < 4
    _wait_until_served(server)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * (8 << 20) + b"\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(20_000))
        + b"\r\n",
        # Read whole before the size was counted: it got through.
        b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        # Its target most of it: 414 (it was a 431 naming the head).
        b"GET /livez?" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /livez?" + b"a" * (8 << 20) + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=[
        "8 MiB header line",
        "20,000 header fields",
        "a 100 KB head in one piece",
        "a 70 KB target",
        "an 8 MiB target",
    ],
)
def test_an_oversized_head_is_refused(server: CliServer, head: bytes) -> None:
    sock = _connect(server)

    def send() -> None:
        # The server stops reading once it has refused: the rest is never sent.
        with contextlib.suppress(OSError):
            sock.sendall(head)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answer = _answer(sock)
    status, error = (
        (414, "the request target (URL) is too long")
        if head.startswith(b"GET /livez?")
        else (431, "the request head is too large")
    )
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:100]
    # Said as it is: a head of two fields read in one piece was "too many header fields".
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == error
    sock.close()
    sender.join(timeout=10)
    _refusal_logged(server, answer, status)


@pytest.mark.parametrize(
    ("path", "error_of"),
    [
        ("/v1/completions", lambda body: body["error"]["message"]),  # OpenAI's clients read it
        ("/v2/models/echo/infer", lambda body: body["error"]),
        ("/models/echo/predict", lambda body: body["error"]),
    ],
)
def test_a_head_refused_by_the_protocol_is_answered_in_its_paths_error_body(
    server: CliServer, path: str, error_of: Callable[[Any], str]
) -> None:
    """The refusals the HTTP protocol writes itself (400, 408, 431, 501) were loadonce's own
    body on every path: the openai client cannot read a string `error`."""
    sock = _connect(server)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\x00b\r\n\r\n".encode())
    answer = _answer(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 400")
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert error_of(body).startswith("the request is not valid HTTP/1.1: a header value holds")
    if path.startswith("/v1"):
        assert body["error"]["type"] == "invalid_request_error"


_HOST = b"Host: 127.0.0.1\r\n"
_POST = b"POST /models/echo/predict HTTP/1.1\r\n" + _HOST + b"Content-Type: application/json\r\n"
_POST_1_0 = _POST.replace(b"HTTP/1.1", b"HTTP/1.0")
_CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"
_CHUNKS = b'f\r\n{"inputs": [1]}\r\n0\r\n\r\n'


def _get(line: bytes, fields: bytes = b"") -> bytes:
    return line + b"\r\n" + _HOST + fields + b"\r\n"


# Heads RFC 9112 / 9110 refuse: the status they give, and words of the answer that name what
# was wrong (each was "the request is not valid HTTP/1.1", an unknown method, a smuggling
# attempt and a folded line alike; some were served).
_NOT_HTTP = {
    "unknown method": (_get(b"FOO /livez HTTP/1.1"), 501, "method FOO is not implemented"),
    "lowercase method": (_get(b"get /livez HTTP/1.1"), 501, "method get is not implemented"),
    "method not a token": (_get(b"G(T /livez HTTP/1.1"), 400, "method is not one"),
    "TLS to the plain port": (b"\x16\x03\x01\x00\xa5\x01\x00", 400, "not TLS"),
    "NUL in a header": (_get(b"GET /livez HTTP/1.1", b"X-A: a\x00b\r\n"), 400, "a header value"),
    "CR in a header": (_get(b"GET /livez HTTP/1.1", b"X-A: a\rb\r\n"), 400, "expected LF"),
    "folded line": (_get(b"GET /livez HTTP/1.1", b"X-A: a\r\n b\r\n"), 400, "whitespace"),
    "space before colon": (_get(b"GET /livez HTTP/1.1", b"X-A : a\r\n"), 400, "header token"),
    "bad header name": (_get(b"GET /livez HTTP/1.1", b"X(A): a\r\n"), 400, "header token"),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2 is not supported"),
    "HTTP/2.0 line": (_get(b"GET /livez HTTP/2.0"), 505, "HTTP/2.0 is not supported"),
    "HTTP/1.2": (_get(b"GET /livez HTTP/1.2"), 505, "version is not supported"),
    "HTTP/0.9": (b"GET /livez\r\n\r\n", 505, "HTTP/0.9 is not supported"),
    "negative length": (_POST + b"Content-Length: -1\r\n\r\n", 400, "Content-Length"),
    "length list": (_POST + b"Content-Length: 15, 15\r\n\r\n", 400, "Content-Length"),
    "two lengths": (
        _POST + b"Content-Length: 15\r\nContent-Length: 16\r\n\r\n",
        400,
        "duplicate Content-Length",
    ),
    "huge length": (_POST + b"Content-Length: 1" + b"0" * 30 + b"\r\n\r\n", 400, "overflow"),
    "length and chunked": (
        _POST + b"Content-Length: 15\r\n" + _CHUNKED + _CHUNKS,
        400,
        "can't be present with",
    ),
    "chunked not last": (
        _POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n" + _CHUNKS,
        400,
        "Transfer-Encoding",
    ),
    "chunked in HTTP/1.0": (_POST_1_0 + _CHUNKED + _CHUNKS, 400, "in an HTTP/1.0 request"),
    "chunked in kept-alive HTTP/1.0": (
        _POST_1_0 + b"Connection: keep-alive\r\n" + _CHUNKED + _CHUNKS,
        400,
        "in an HTTP/1.0 request",
    ),
    "bad chunk size": (_POST + _CHUNKED + b"zz\r\n" + _CHUNKS, 400, "chunk size"),
    "bad chunk extension": (_POST + _CHUNKED + b"f;\x01" + _CHUNKS[1:], 400, "chunk extension"),
    "CONNECT": (_get(b"CONNECT 127.0.0.1:443 HTTP/1.1"), 501, "not a proxy"),
    "CONNECT to a path": (_get(b"CONNECT /livez HTTP/1.1"), 501, "not a proxy"),
    "* but for OPTIONS": (_get(b"GET * HTTP/1.1"), 400, "* is for OPTIONS only"),
    "authority-form GET": (_get(b"GET 127.0.0.1:80 HTTP/1.1"), 400, "not a valid path"),
    "user in the target": (_get(b"GET http://u@127.0.0.1/ HTTP/1.1"), 400, "user information"),
}


@pytest.mark.parametrize(("head", "status", "error"), _NOT_HTTP.values(), ids=_NOT_HTTP.keys())
def test_a_request_that_is_not_http_is_answered_in_json_and_logged(
    server: CliServer, head: bytes, status: int, error: str
) -> None:
    """uvicorn answered these in plain text, with no request id, and logged no line; then
    each was "the request is not valid HTTP/1.1" whatever was wrong, a 400 where the RFCs
    give a status of their own (an unknown method, CONNECT: 501; another version: 505), and
    HTTP/1.0 with Transfer-Encoding, CONNECT to a path, ``GET *`` and HTTP/2.0 were served."""
    with _connect(server) as sock:
        sock.sendall(head)
        answer = _answer(sock)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
    assert b"\r\nconnection: close\r\n" in answer, answer
    assert error in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"], answer
    _refusal_logged(server, answer, status)


def _refusal_logged(server: CliServer, answer: bytes, status: int) -> None:
    """The refusal carries a request id (header and body), and the log has its line."""
    head, body = answer.split(b"\r\n\r\n", 1)
    request_id = json.loads(body)["request_id"]
    assert f"x-request-id: {request_id}".encode() in head.lower()
    wait_until(
        lambda: any(
            request_id in line and f" {status} " in line for line in server.log().splitlines()
        ),
        5,
        "the refusal's access line",
    )


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"x\\y, chunked"])
def test_a_transfer_coding_other_than_chunked_is_refused(server: CliServer, coding: bytes) -> None:
    # "gzip, chunked" was read as plain chunks, its gzip ignored; RFC 9112 says 501.
    with _connect(server) as sock:
        sock.sendall(
            b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: " + coding + b"\r\n\r\n"
            b'10\r\n{"inputs": [1]} \r\n0\r\n\r\n'
        )
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 501"), answer
    body = answer.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["error"].startswith("transfer coding '")  # JSON, whatever it quotes


def test_open_connections_are_capped_per_worker(server: CliServer) -> None:
    idle = [_connect(server) for _ in range(25)]
    try:
        time.sleep(0.2)  # let the server accept them all
        refused = httpx.get(f"{server.url}/models", headers={"X-Request-ID": "past-the-limit"})
        assert refused.status_code == 503
        # Health probes are answered past the limit: a few slow clients holding every slot
        # made /livez a 503, and an orchestrator would kill a live worker for it.
        for probe in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert httpx.get(server.url + probe).status_code == 200, probe
        # As loadonce's own 503s: JSON, Retry-After, the request id, a line in the log.
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["x-request-id"] == "past-the-limit"
        assert "max_connections" in refused.json()["error"]
        wait_until(
            lambda: any(
                "past-the-limit" in line and " 503 " in line for line in server.log().splitlines()
            ),
            5,
            "the refusal's access line",
        )
    finally:
        for sock in idle:
            sock.close()
    _wait_until_served(server)


@pytest.mark.parametrize("limit", [1, 3])
def test_max_connections_are_served_the_next_one_refused(tmp_path: Path, limit: int) -> None:
    """uvicorn's check counted the connection asking among the open ones: max_connections - 1
    were served, and max_connections = 1 refused every request."""
    env = cli_env(tmp_path, {"LOADONCE_MAX_CONNECTIONS": str(limit)})
    with serving(["tests.loaders:echo"], tmp_path, env=env) as server:
        idle = [_connect(server) for _ in range(limit - 1)]
        try:
            time.sleep(0.2)  # let the server accept them all
            with httpx.Client() as client:  # the last one served, kept open
                assert client.get(f"{server.url}/models").status_code == 200
                one_more = _connect(server)
                try:
                    time.sleep(0.2)
                    assert client.get(f"{server.url}/models").status_code == 503
                finally:
                    one_more.close()
        finally:
            for sock in idle:
                sock.close()


def _wait_until_served(server: CliServer) -> None:
    """The server closes refused connections a moment after answering: then it serves."""
    wait_until(lambda: httpx.get(f"{server.url}/models").status_code == 200, 5, "connections freed")


def _request(path: str, body: bytes = b"", *, close: bool = False) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    head += f"content-length: {len(body)}\r\n" + ("connection: close\r\n" if close else "")
    return head.encode() + b"\r\n" + body


def test_pipelined_requests_are_answered_whole_and_in_order(server: CliServer) -> None:
    # A response's head is held until its body follows, and answers may leave together at
    # the end of a step of the event loop: never out of order, never cut short by a close.
    bodies = [f'{{"inputs": [{index}]}}'.encode() for index in range(5)]
    with _connect(server) as sock:
        sock.sendall(
            b"".join(_request("/models/echo/predict", body) for body in bodies[:-1])
            + _request("/models/echo/predict", bodies[-1], close=True)
        )
        received = _answer(sock)
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 5, received
    for index, answer in enumerate(answers):
        assert answer.startswith(b"200"), answer
        assert f'"outputs":[{{"echo":{index},'.encode() in answer, answer
        assert answer.rstrip().endswith(b"}]}"), answer


def test_answers_to_many_clients_at_once_are_whole(server: CliServer) -> None:
    # 12 at once: the connections refused by the tests before stay open up to a second after
    # their answer, and the server takes 20.
    time.sleep(1.1)
    with httpx.Client() as client, ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(
                lambda index: client.post(
                    f"{server.url}/models/echo/predict", json={"inputs": [index]}
                ),
                range(200),
            )
        )
    assert [answer.json()["outputs"][0]["echo"] for answer in answers] == list(range(200))


def test_a_bad_chunk_is_answered_and_logged_under_the_requests_own_id(server: CliServer) -> None:
    """Its route was running (the head was read): the 400 carried a new id, and the only
    log line, the route's, said 499 under the client's id."""
    with _connect(server) as sock:
        sock.sendall(
            b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"X-Request-ID: chunk-refused-1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
        )
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"x-request-id: chunk-refused-1" in answer.lower()
    wait_until(
        lambda: any(
            "chunk-refused-1" in line and " 400 " in line for line in server.log().splitlines()
        ),
        5,
        "the request's line, saying 400",
    )


def test_a_refused_heads_line_leaves_its_query_out(server: CliServer) -> None:
    """The query may hold a token: no other line writes one."""
    with _connect(server) as sock:
        sock.sendall(
            b"GET /livez?access_token=SECRET123 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
            + b"\r\n"
        )
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer
    _refusal_logged(server, answer, 431)
    assert "SECRET123" not in server.log()


def _chunked_head(request_id: bytes) -> bytes:
    return (
        b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: "
        + request_id
        + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )


def _send_in_pieces(sock: socket.socket, data: bytes) -> None:
    """Sends ``data``, stopping quietly where the server closed the connection."""
    with contextlib.suppress(OSError):
        for start in range(0, len(data), 65536):
            sock.sendall(data[start : start + 65536])


def test_trailer_fields_after_a_chunked_body_are_bounded_like_a_head(server: CliServer) -> None:
    """Trailer lines after the last chunk were read without bound (100 MiB of them: 2.4 GB
    more resident memory, the loop held 10 s); past a head's size they are refused."""
    body = b'{"inputs": [1]}'
    last_chunk = b"%x\r\n%s\r\n0\r\n" % (len(body), body)
    # 600 KB in one field, and in many small ones: past 64 KiB, under any body limit.
    for trailers, why in (
        (b"a: " + b"b" * 600_000 + b"\r\n", b"trailer fields or chunk extensions are too large"),
        (b"a: b\r\n" * 100_000, b"too many trailer fields"),
    ):
        with _connect(server) as sock:
            _send_in_pieces(sock, _chunked_head(b"trailers-1") + last_chunk + trailers)
            answer = _answer(sock)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert why in answer
    _wait_until_served(server)


def test_chunk_extensions_without_end_are_refused(server: CliServer) -> None:
    """A chunk's size line that never ends (an extension going on) kept the body's timer
    going as long as bytes came (the class of CVE-2024-22019)."""
    with _connect(server) as sock:
        _send_in_pieces(sock, _chunked_head(b"extensions-1") + b"1;" + b"x" * 300_000)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    _wait_until_served(server)


def test_a_few_trailer_fields_are_accepted_and_never_become_headers(server: CliServer) -> None:
    """A trailer is not merged into the request's headers: its route read them since the
    head (a trailing X-Request-Timeout would otherwise give this request a deadline it
    cannot meet)."""
    body = b'{"inputs": [7]}'
    chunks = b"".join(b"1;name=value\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    with _connect(server) as sock:
        sock.sendall(
            _chunked_head(b"trailers-2")
            + chunks
            + b"0\r\nX-Request-Timeout: 0.000001\r\nX-Checksum: abc\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            piece = sock.recv(65536)
            if not piece:
                break
            answer += piece
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["outputs"][0]["echo"] == 7


def test_pipelined_requests_are_not_taken_for_chunked_framing(tmp_path: Path) -> None:
    """The bound on a chunked body's framing counted every byte of a read: a request read
    with the next one's head (pipelined) made its 40 KB body look like framing, a false 431
    with max_header_bytes under 32 KiB, and the first answer was lost."""
    env = cli_env(tmp_path, {"LOADONCE_MAX_HEADER_BYTES": "8192"})

    def post(body: bytes, request_id: bytes, declared: int) -> bytes:
        return (
            b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-ID: "
            + request_id
            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % declared
            + body
        )

    with serving(["tests.loaders:echo"], tmp_path, env=env) as running:
        first = b'{"inputs": [1]' + b" " * 40_000 + b"}"
        second = b'{"inputs": [2]}'
        with _connect(running) as sock:
            # The first request whole, the second's head and 5 bytes of its body: one write.
            sock.sendall(post(first, b"pipe-1", len(first)) + post(second[:5], b"pipe-2", 15))
            time.sleep(0.3)
            sock.sendall(second[5:])
            answers = b""
            while answers.count(b"HTTP/1.1 200") < 2 or not answers.rstrip().endswith(b"}"):
                piece = sock.recv(65536)
                if not piece:
                    break
                answers += piece
    assert answers.count(b"HTTP/1.1 200") == 2, answers


def test_a_client_that_reads_nothing_of_its_answer_is_dropped(server: CliServer) -> None:
    """No write timeout: a client that never read its answer kept its connection slot and
    the answer's buffered copy as long as it stayed (ten clients of an 18 MiB answer: 470
    MiB; fifty: every slot, every request a 503). It is dropped after body_timeout_s."""
    # A string: cheap to parse and to write, and past the kernel's buffers.
    body = b'{"inputs": ["' + b"x" * 12_000_000 + b'"]}'
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the window is set
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(
            b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(5)  # reading nothing, well past body_timeout_s (1 s)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while piece := sock.recv(1 << 20):
                received += piece
    head, _, answer = received.partition(b"\r\n\r\n")
    declared = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    assert len(answer) < declared, "the whole answer waited for a client that never read"
    _wait_until_served(server)


@pytest.mark.parametrize(
    ("path", "length", "status"),
    [
        ("/models/echo/predict", 10**12, 413),  # past max_body_bytes, from its length alone
        ("/models/nope/predict", 15, 404),  # an unknown model, answered before its body
        ("/v2/models/nope/infer", 15, 404),
        ("/v1/completions", 10**12, 413),
    ],
    ids=["too-large", "unknown-model", "v2-unknown-model", "openai-too-large"],
)
def test_an_answer_before_the_body_closes_the_connection(
    server: CliServer, path: str, length: int, status: int
) -> None:
    """A client that sent ``Expect: 100-continue`` waits for the 100 before its body; answered
    with a final status instead, it sends no body. The connection stayed open, the server
    waiting for that body: the client's next request on it was read as the body's bytes, and
    went unanswered until the body timeout. Now the answer says ``connection: close`` and the
    connection ends; a request read whole keeps its connection."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Expect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
    ).encode()
    with _connect(server) as sock:
        sock.settimeout(3)
        sock.sendall(head)
        answer = _answer(sock)  # the server ends the connection: no timeout
    assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer
    assert b"\r\nconnection: close\r\n" in answer.lower(), answer
    # Two requests read whole on one connection: both answered on it.
    with _connect(server) as sock:
        sock.settimeout(3)
        sock.sendall(_request("/models/echo/predict", b'{"inputs": [1]}'))
        sock.sendall(_request("/models/echo/predict", b'{"inputs": [2]}', close=True))
        both = _answer(sock)
    assert both.count(b"HTTP/1.1 200") == 2, both


def test_a_body_sent_after_its_answer_is_dropped_and_the_answer_read_whole(
    server: CliServer,
) -> None:
    """Refused from its length, a body the client sends anyway is read and dropped while it
    comes (a close with its bytes unread would reset the connection, the answer lost)."""
    with _connect(server) as sock:
        sock.settimeout(3)
        sock.sendall(
            b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        for _ in range(20):
            sock.sendall(b"x" * 100_000)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert answer.endswith(b"}"), answer


@pytest.mark.parametrize(
    ("follower", "status"),
    [
        (b"NOT HTTP\x00\r\n\r\n", 400),
        (b"GET /models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /models HTTP/1.1\r\n" + b"X-Field: 1\r\n" * 150 + b"\r\n", 431),
        (b"GET /models HTTP/1.1\r\nHost: 127.0.0.1\r\n", 408),  # a head that never ends
    ],
    ids=["not-http", "head-too-large", "too-many-fields", "head-never-ends"],
)
def test_a_refused_request_behind_one_being_answered_waits_for_its_answer(
    server: CliServer, follower: bytes, status: int
) -> None:
    """The refusal of a pipelined request was written as soon as it was read, before the
    answer of the request ahead of it, and ended the connection under that answer: the
    client read the refusal as its first request's answer, and the server logged a
    traceback (a write after the connection's end). Answers keep their requests' order."""
    with _connect(server) as sock:
        sock.settimeout(5)
        sock.sendall(_request("/models/echo/predict", b'{"inputs": [1]}') + follower)
        received = _answer(sock)
    answers = received.split(b"HTTP/1.1 ")[1:]
    assert [answer[:3] for answer in answers] == [b"200", str(status).encode()], received
    assert b'"outputs":[{"echo":1,' in answers[0]
    _wait_until_served(server)
    assert "Exception in ASGI application" not in server.log()
    assert "Traceback" not in server.log()


def _exchange(server: CliServer, data: bytes, *, then: bytes = b"") -> list[bytes]:
    """The answers (head and body each) to ``data``, sent in one write, then to ``then``,
    sent a moment later, on one connection, until it closes or is quiet for a second."""
    received = b""
    with _connect(server) as sock:
        for piece, quiet in ((data, 0.3 if then else 1.0), (then, 1.0)):
            if not piece:
                continue
            sock.sendall(piece)
            sock.settimeout(quiet)
            with contextlib.suppress(TimeoutError):
                while chunk := sock.recv(65536):
                    received += chunk
    answers = []
    while received:
        head, _, rest = received.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answers.append(head + b"\r\n\r\n" + rest[:length])
        received = rest[length:]
    return answers


_LIVEZ = _get(b"GET /livez HTTP/1.1")
_BAD_HOSTS = {
    "no Host in HTTP/1.1": (b"GET /livez HTTP/1.1\r\n\r\n", "no Host header"),
    "two Hosts": (_get(b"GET /livez HTTP/1.1", _HOST), "more than one Host"),
    # The guard read the last, the app the first: a loopback name in one let the other by.
    "a foreign Host first": (
        b"GET /livez HTTP/1.1\r\nHost: evil.example\r\n" + _HOST + b"\r\n",
        "more than one Host",
    ),
    "two Hosts in HTTP/1.0": (_get(b"GET /livez HTTP/1.0", _HOST), "more than one Host"),
    "a list": (b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1, evil\r\n\r\n", "not a host[:port]"),
    "a space": (b"GET /livez HTTP/1.1\r\nHost: a b\r\n\r\n", "not a host[:port]"),
    "user information": (b"GET /livez HTTP/1.1\r\nHost: u@127.0.0.1\r\n\r\n", "not a host"),
    "a path": (b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1/x\r\n\r\n", "not a host[:port]"),
    "a port not a number": (b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1:x\r\n\r\n", "not a host"),
    "absolute target, no Host": (b"GET http://127.0.0.1/livez HTTP/1.1\r\n\r\n", "no Host"),
}


@pytest.mark.parametrize(("head", "error"), _BAD_HOSTS.values(), ids=_BAD_HOSTS.keys())
def test_a_missing_repeated_or_malformed_host_is_a_400(
    server: CliServer, head: bytes, error: str
) -> None:
    """RFC 9112 3.2: a 400 for an HTTP/1.1 request without Host, for any with more than one,
    and for one whose Host is not a host and port. They were served, or a 403 naming a
    foreign host. The connection serves its next request."""
    refused, *rest = _exchange(server, head + (b"" if b"HTTP/1.0" in head else _LIVEZ))
    assert refused.startswith(b"HTTP/1.1 400 "), refused
    assert error in json.loads(refused.split(b"\r\n\r\n", 1)[1])["error"]
    if b"HTTP/1.0" not in head:
        assert [answer[:12] for answer in rest] == [b"HTTP/1.1 200"], rest


@pytest.mark.parametrize(
    "head",
    [
        b"GET /livez HTTP/1.1\r\nHost: \r\n\r\n",  # empty: a target URI with no authority
        b"GET /livez HTTP/1.0\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n",
        b"GET /livez HTTP/1.1\r\nHost: localhost:\r\n\r\n",  # an empty port is valid
        # Absolute-form: its authority is the Host (RFC 9112 3.2.2), the field's ignored.
        b"GET http://127.0.0.1:8000/livez HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    ],
)
def test_a_valid_host_is_served(server: CliServer, head: bytes) -> None:
    answers = _exchange(server, head)
    assert [answer[:12] for answer in answers] == [b"HTTP/1.1 200"], answers


def test_an_absolute_target_names_the_host_the_guard_checks(server: CliServer) -> None:
    """The target's authority stands for the Host (RFC 9112 3.2.2): a foreign one is refused
    by the DNS-rebinding guard as a foreign Host field is (it was served)."""
    head = b"GET http://evil.example/livez HTTP/1.1\r\n" + _HOST + b"\r\n"
    (answer,) = _exchange(server, head)
    assert answer.startswith(b"HTTP/1.1 403 "), answer
    assert b"not to Host 'evil.example'" in answer


_UPGRADE = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n"


def test_a_request_asking_for_h2c_is_served_as_http_1_1_with_its_body(server: CliServer) -> None:
    """``curl --http2 -d ... http://`` asks to upgrade to h2c. The parser stopped after the
    head and skipped the body: the route read none (422), and the request pipelined behind
    it was never answered."""
    post = _POST + _UPGRADE + b'Content-Length: 15\r\n\r\n{"inputs": [7]}'
    answers = _exchange(server, post + _LIVEZ)
    assert [answer[:12] for answer in answers] == [b"HTTP/1.1 200"] * 2, answers
    assert b'"outputs":[{"echo":7,' in answers[0], answers[0]
    # The body in pieces, after the head.
    head, body = post.split(b"\r\n\r\n")
    answers = _exchange(server, head + b"\r\n\r\n" + body[:5], then=body[5:] + _LIVEZ)
    assert [answer[:12] for answer in answers] == [b"HTTP/1.1 200"] * 2, answers
    assert b'"outputs":[{"echo":7,' in answers[0], answers[0]


def test_the_body_of_an_upgrade_request_is_never_read_as_a_request(server: CliServer) -> None:
    """Request smuggling: a body sent after its head (with an Upgrade the server does not
    take) was parsed as a request of its own, one a proxy in front never saw as one."""
    hidden = _get(b"GET /models/echo HTTP/1.1")
    head = _POST + _UPGRADE + b"Content-Length: %d\r\n\r\n" % len(hidden)
    answers = _exchange(server, head, then=hidden)
    assert len(answers) == 1, answers  # the body's answer: not JSON, a 4xx
    assert answers[0].startswith(b"HTTP/1.1 4"), answers
    assert b'"name":"echo"' not in answers[0]
    # A chunked body with an Upgrade is refused, never read as requests.
    chunk = b"%x\r\n" % len(hidden) + hidden
    answers = _exchange(server, _POST + _UPGRADE + _CHUNKED, then=chunk)
    assert [answer[:13] for answer in answers] == [b"HTTP/1.1 400 "], answers
    assert b"Content-Length" in answers[0]


def test_options_asterisk_is_answered_by_the_server(server: CliServer) -> None:
    """``OPTIONS *`` (RFC 9110 9.3.7) asks about the server itself: it was a 404."""
    answers = _exchange(server, _get(b"OPTIONS * HTTP/1.1") + _LIVEZ)
    assert [answer[:12] for answer in answers] == [b"HTTP/1.1 200"] * 2, answers
    assert b"\r\ncontent-length: 0\r\n" in answers[0]
    assert b"\r\nx-request-id: " in answers[0]


def test_expect_100_continue_is_ignored_in_http_1_0(server: CliServer) -> None:
    """RFC 9110 10.1.1: an HTTP/1.0 client cannot read an interim answer; it was sent one."""
    head = _POST_1_0 + b"Content-Length: 15\r\nExpect: 100-continue\r\n\r\n"
    answers = _exchange(server, head, then=b'{"inputs": [3]}')
    assert [answer[:12] for answer in answers] == [b"HTTP/1.1 200"], answers
