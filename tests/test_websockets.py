"""A user's own WebSocket routes go through loadonce's middleware as HTTP requests do: API
keys, the browser guard (a page of another origin may read a WebSocket's messages, so its
handshake is refused on every route), a request id and an access line. They skipped all of
it: any page could open one to a loopback server and run its models."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, WebSocket
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

import loadonce
from loadonce import Model
from loadonce.http.access_keys import AccessKeys
from loadonce.http.websocket_errors import unreadable_message
from tests.servers import CliServer, ThreadedServer, cli_env, serving, wait_until

KEY = "inference-key-0123456789"


def _app(access: AccessKeys | None, allowed_hosts: tuple[str, ...] = ()) -> FastAPI:
    specs = [loadonce.ModelSpec(name="double", loader=lambda: lambda batch: [2 * x for x in batch])]
    app = FastAPI(lifespan=loadonce.lifespan(specs, access=access, allowed_hosts=allowed_hosts))

    @app.websocket("/stream")
    async def stream(
        websocket: WebSocket, model: Annotated[Model, Depends(loadonce.ModelDependency("double"))]
    ) -> None:
        await websocket.accept()
        number = float(await websocket.receive_text())
        await websocket.send_text(str(await model.predict(number)))
        await websocket.close()

    loadonce.install_middleware(app)
    return app


@pytest.fixture(scope="module")
def keyed() -> Iterator[ThreadedServer]:
    with ThreadedServer(_app(AccessKeys(inference=(KEY,)))) as running:
        yield running


@pytest.fixture(scope="module")
def open_server() -> Iterator[ThreadedServer]:
    with ThreadedServer(_app(None)) as running:
        yield running


def _url(server: ThreadedServer) -> str:
    return f"ws://127.0.0.1:{server.port}/stream"


def _connect_as(server: ThreadedServer, host: str, **headers: str) -> ClientConnection:
    """A handshake to ``server`` whose Host names ``host`` (a Host among the additional
    headers is a second Host field, a 400: websockets sends its own too)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    url = f"ws://{host}/stream"
    return connect(url, sock=sock, additional_headers=headers, open_timeout=10)


def _refused_with(server: ThreadedServer, **headers: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        connect(_url(server), additional_headers=headers, open_timeout=10).close()
    return refused.value.response.status_code


def test_a_websocket_needs_a_key_where_keys_are_set(keyed: ThreadedServer) -> None:
    assert _refused_with(keyed) == 401
    assert _refused_with(keyed, Authorization="Bearer not-the-key") == 401
    with connect(_url(keyed), additional_headers={"X-API-Key": KEY}) as websocket:
        websocket.send("21")
        assert websocket.recv(timeout=10) == "[42.0]"


def test_a_websocket_from_another_origin_or_host_is_refused(open_server: ThreadedServer) -> None:
    assert _refused_with(open_server, Origin="http://evil.example") == 403
    assert _refused_with(open_server, **{"Sec-Fetch-Site": "cross-site"}) == 403
    # DNS rebinding: a loopback server answers only to loopback names.
    with pytest.raises(InvalidStatus) as refused:
        _connect_as(open_server, "evil.example").close()
    assert refused.value.response.status_code == 403
    # Two Host fields, one a loopback name: a 400 (the guard read the last, the app the first).
    assert _refused_with(open_server, Host="evil.example") == 400
    # The same origin as the server's, or none (not a browser): served.
    own = f"http://127.0.0.1:{open_server.port}"
    with connect(_url(open_server), additional_headers={"Origin": own}) as websocket:
        websocket.send("1")
        assert websocket.recv(timeout=10) == "[2.0]"


def test_a_websocket_has_a_request_id_and_an_access_line(
    open_server: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="loadonce.access")
    headers = {"X-Request-ID": "ws-request-1"}
    with connect(_url(open_server), additional_headers=headers) as websocket:
        handshake = websocket.response
        assert handshake is not None
        assert handshake.headers["X-Request-ID"] == "ws-request-1"
        websocket.send("3")
        assert websocket.recv(timeout=10) == "[6.0]"
    assert _refused_with(open_server, Origin="http://evil.example", **{"X-Request-ID": "ws-2"})

    def logged(status: str, request_id: str) -> bool:
        lines = [record.getMessage() for record in caplog.records]
        return any(f"WEBSOCKET /stream {status}" in x and request_id in x for x in lines)

    # A line is written once its answer has left: waited for.
    wait_until(lambda: logged("101", "ws-request-1"), 5, "the accepted WebSocket's line")
    wait_until(lambda: logged("403", "ws-2"), 5, "the refused WebSocket's line")


@pytest.fixture(scope="module")
def behind_a_proxy() -> Iterator[ThreadedServer]:
    with ThreadedServer(_app(None, allowed_hosts=("app.example.com",))) as running:
        yield running


def test_a_page_of_an_allowed_host_opens_a_websocket_through_a_proxy(
    behind_a_proxy: ThreadedServer,
) -> None:
    """Behind a proxy that drops the port from Host, or passes on its own Host, the page's
    origin is not the Host the server sees: the operator's allowed_hosts names it."""
    with _connect_as(
        behind_a_proxy, "app.example.com", Origin="https://app.example.com:8443"
    ) as websocket:
        websocket.send("4")
        assert websocket.recv(timeout=10) == "[8.0]"
    # The proxy's own Host: 127.0.0.1:port.
    headers = {"Origin": "https://app.example.com"}
    with connect(_url(behind_a_proxy), additional_headers=headers) as websocket:
        websocket.send("4")
        assert websocket.recv(timeout=10) == "[8.0]"
    assert _refused_with(behind_a_proxy, Origin="https://evil.example") == 403


def _slow(batch: list[float]) -> list[float]:
    time.sleep(0.5)
    return batch


def _broken(batch: list[float]) -> list[float]:
    raise ZeroDivisionError("a secret of the model's")


def _failing_app() -> FastAPI:
    specs = [
        loadonce.ModelSpec(name="pair", loader=lambda: lambda b: b, input_shape=(2,)),
        loadonce.ModelSpec(name="slow", loader=lambda: _slow, timeout_s=0.05),
        loadonce.ModelSpec(name="broken", loader=lambda: _broken),
        loadonce.ModelSpec(name="gone", loader=lambda: lambda b: b),
    ]
    app = FastAPI(lifespan=loadonce.lifespan(specs))

    @app.websocket("/ask/{name}")
    async def ask(
        websocket: WebSocket,
        name: str,
        registry: Annotated[loadonce.Registry, Depends(loadonce.get_registry)],
    ) -> None:
        model = registry.get(name)  # before accepting: an unknown name is an HTTP 404
        await websocket.accept()
        text = await websocket.receive_text()
        if text == "raise":
            raise RuntimeError("a secret of the route's")
        if text == "unload":  # as an operator does: it stays unloaded until loaded again
            await model.unload(on_request=True)
            text = "1"
        await websocket.send_text(str(await model.predict([float(text)])))

    loadonce.install_middleware(app)
    return app


@pytest.fixture(scope="module")
def failing() -> Iterator[ThreadedServer]:
    with ThreadedServer(_failing_app()) as running:
        yield running


@pytest.mark.parametrize(
    ("model", "sent", "code", "reason"),
    [
        ("pair", "1", 1008, "invalid inputs"),  # inputs that do not fit: HTTP's 400
        ("slow", "1", 1013, "deadline"),  # HTTP's 504: try again later
        ("broken", "1", 1011, "the model raised ZeroDivisionError"),
        # HTTP's 503, but one no retry helps: never "try again later".
        ("gone", "unload", 1011, "state: unloaded"),
        ("pair", "raise", 1011, "the server failed (RuntimeError)"),  # the route's own
    ],
)
def test_an_error_after_the_websocket_opened_closes_it_with_a_code_and_the_reason(
    failing: ThreadedServer, model: str, sent: str, code: int, reason: str
) -> None:
    """loadonce's answer to its errors was an HTTP response, which an open WebSocket cannot
    carry: uvicorn refused it and, as for any exception of the route, dropped the connection
    without a close frame (1006)."""
    url = f"ws://127.0.0.1:{failing.port}/ask/{model}"
    with connect(url, additional_headers={"X-Request-ID": "ws-failed"}) as websocket:
        websocket.send(sent)
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(timeout=10)
    received = closed.value.rcvd
    assert received is not None, "closed without a close frame"
    assert received.code == code
    assert reason in received.reason
    assert "ws-failed" in received.reason
    assert "secret" not in received.reason


def test_an_error_before_the_websocket_opened_is_an_http_answer(failing: ThreadedServer) -> None:
    assert _refused_with_url(f"ws://127.0.0.1:{failing.port}/ask/nope") == 404


def _refused_with_url(url: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10).close()
    return refused.value.response.status_code


# A user's app served by `loadonce serve`: a route that sends without end, one that echoes.
_HOSTILE_APP = """
from fastapi import FastAPI, WebSocket
import loadonce

specs = [loadonce.ModelSpec(name="echo", loader="tests.loaders:echo")]
app = FastAPI(lifespan=loadonce.lifespan(specs))


@app.websocket("/flood")
async def flood(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        await websocket.send_bytes(b"x" * 65536)


@app.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        await websocket.send_text(await websocket.receive_text())


@app.websocket("/echo-bytes")
async def echo_bytes(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        await websocket.send_bytes(await websocket.receive_bytes())


@app.websocket("/echo-json")
async def echo_json(websocket: WebSocket) -> None:
    await websocket.accept()
    while True:
        await websocket.send_json(await websocket.receive_json())


loadonce.install_middleware(app)
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    tmp_path = tmp_path_factory.mktemp("hostile-websockets")
    (tmp_path / "ws_app.py").write_text(_HOSTILE_APP)
    env = cli_env(tmp_path, {"LOADONCE_BODY_TIMEOUT_S": "1", "LOADONCE_MAX_CONNECTIONS": "4"})
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    with serving(["ws_app:app"], tmp_path, env=env) as server:
        yield server


def _opened(server: CliServer, path: str) -> socket.socket:
    """A raw WebSocket handshake to ``path`` with a receive window of 4 KiB, its answer read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the window is set
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


_DROPPED = "a WebSocket client read nothing for 1 s"
_PING = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125  # masked, 125 bytes of payload


def _send_pings(sock: socket.socket) -> None:
    """Pings, reading nothing: until the server stops reading them (or for 10 s)."""
    sock.settimeout(3)
    ends = time.monotonic() + 10
    with contextlib.suppress(TimeoutError, ConnectionError):
        while time.monotonic() < ends:
            sock.sendall(_PING * 1000)


@pytest.mark.parametrize(
    ("path", "behave"),
    [("/flood", lambda sock: None), ("/echo", _send_pings)],
    ids=["route-sends", "client-pings"],
)
def test_a_websocket_client_that_reads_nothing_is_dropped(
    served: CliServer, path: str, behave: Callable[[socket.socket], None]
) -> None:
    """uvicorn waited for good on a client that read nothing: the route's send never
    returned, the connection and its buffer stayed as long as the client did, and every
    ping it sent was answered into a buffer that grew without end (6 MiB a second). Reads
    stop while the client reads nothing, and it is dropped after body_timeout_s."""
    drops = served.log().count(_DROPPED)
    with _opened(served, path) as sock:
        behave(sock)
        time.sleep(4)  # reading nothing, well past body_timeout_s (1 s)
        received = 0
        sock.settimeout(10)
        with contextlib.suppress(ConnectionResetError):
            while piece := sock.recv(1 << 20):
                received += len(piece)
    # Dropped: the connection ended; a route sending without end is never done otherwise.
    wait_until(lambda: served.log().count(_DROPPED) > drops, 10, "the drop's log line")
    assert received < 50 << 20


def _handshake_answer(server: CliServer) -> bytes:
    """The whole answer to a handshake the server refuses (or its head, if it accepts)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"GET /echo HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while not answer.startswith(b"HTTP/1.1 101") and (piece := sock.recv(65536)):
            answer += piece
    return answer


def test_a_websocket_handshake_past_max_connections_is_refused(served: CliServer) -> None:
    """uvicorn takes a WebSocket handshake before its max_connections check: past the limit
    every handshake was accepted, each holding a connection for good."""
    held = [_opened(served, "/echo") for _ in range(4)]  # max_connections
    try:
        answer = _handshake_answer(served)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"retry-after: 1" in answer.lower()
        assert b"max_connections" in answer
    finally:
        for sock in held:
            sock.close()
    # Their routes end as the server reads their ends: then a handshake is taken again.
    wait_until(lambda: _handshake_answer(served).startswith(b"HTTP/1.1 101"), 10, "the slots back")


def _frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame (a mask of zeros: the payload as it is)."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        length = bytes([0x80 | size])
    elif size < 1 << 16:
        length = bytes([0x80 | 126]) + struct.pack("!H", size)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", size)
    return bytes([first]) + length + b"\0\0\0\0" + payload


# Text whose fragments split a character; a message of 17 fragments of 1 MiB.
_SPLIT_IN_A_CHARACTER = [_frame(0x1, b"ok\xc3", fin=False), _frame(0x0, b"(")]
_FRAGMENTS_OVER_16_MIB = [
    _frame(0x0 if index else 0x1, b"x" * (1 << 20), fin=False) for index in range(17)
]


@pytest.mark.parametrize(
    ("path", "frames", "code"),
    [
        ("/echo", [_frame(0x2, b"binary")], 1003),  # the route reads text
        ("/echo-bytes", [_frame(0x1, b"text")], 1003),  # the route reads bytes
        ("/echo-json", [_frame(0x1, b"{not json")], 1007),
        ("/echo", [_frame(0x1, b"\xff\xfe")], 1007),
        ("/echo", _SPLIT_IN_A_CHARACTER, 1007),
        ("/echo", [_frame(0x3, b"x")], 1002),  # a reserved opcode
        ("/echo", [bytes([0x81, 3]) + b"abc"], 1002),  # unmasked
        ("/echo", [_frame(0x8, struct.pack("!H", 1000))], 1000),  # the client closes: echoed
        ("/echo", [_frame(0x2, b"x" * (17 << 20))], 1009),  # past the 16 MiB a message may hold
        ("/echo", _FRAGMENTS_OVER_16_MIB, 1009),
    ],
    ids=["binary-to-text", "text-to-bytes", "not-json", "bad-utf8", "bad-utf8-in-fragments",
         "bad-opcode", "unmasked", "close", "too-large", "too-large-in-fragments"],
)  # fmt: skip
def test_a_websocket_client_breaking_the_protocol_gets_its_close_code_and_no_traceback(
    served: CliServer, path: str, frames: list[bytes], code: int
) -> None:
    """Each was closed with its code, but logged as the server's error with a traceback: the
    route's receive raised the disconnect on through loadonce's middleware (the server
    logged "Exception in ASGI application"), and text that is not UTF-8 was logged by uvicorn
    with its decoding's traceback: one per message a client sends. A message the route's
    ``receive_text``, ``receive_bytes`` or ``receive_json`` cannot read (the other type, not
    JSON) was the server's failure (1011), with a traceback too."""
    logged = len(served.log())
    with _opened(served, path) as sock:
        with contextlib.suppress(ConnectionError):
            for frame in frames:
                sock.sendall(frame)
        received = b""
        with contextlib.suppress(ConnectionError):
            while len(received) < 4 and (piece := sock.recv(65536)):
                received += piece
    assert received[0] == 0x88, received  # a close frame
    assert struct.unpack("!H", received[2:4])[0] == code
    time.sleep(0.5)  # the route's end, logged
    assert "Traceback" not in served.log()[logged:]


def test_an_exception_of_the_routes_own_code_is_still_its_failure() -> None:
    """Only what Starlette's readers raise for the client's message is the client's: the
    same exception raised by the route's own code stays the server's failure (1011)."""
    message: dict[str, str] = {"bytes": ""}
    for fails in (lambda: message["text"], lambda: json.loads("{"), lambda: b"\xff".decode()):
        with pytest.raises((ValueError, KeyError)) as raised:
            fails()
        assert unreadable_message(raised.value) is None
