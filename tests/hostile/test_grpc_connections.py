"""Connections to the gRPC port that never become calls, and calls whose message never
arrives: bounded in number and in time, as HTTP's are (``max_connections``,
``header_timeout_s``, ``body_timeout_s``). A client that opened connections and sent nothing
held each one for good: 20,000 of them used up the worker's file descriptors, and its HTTP
port stopped answering, health probes included. And calls that sent a few bytes of their
message held every slot of ``max_concurrent_rpcs`` for good: one connection refused every
other client's call."""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.grpc as triton

import loadonce
from loadonce.protocols.grpc import grpc_lifespan
from tests.servers import ThreadedServer, free_port, start_cli, stop, wait_until

MAX_CONNECTIONS = 8
OPENED = 40


def _closed_by_the_server(connections: list[socket.socket], within: float) -> list[socket.socket]:
    """Those of ``connections`` the server closed within ``within`` seconds."""
    watching = selectors.DefaultSelector()
    for connection in connections:
        connection.setblocking(False)
        watching.register(connection, selectors.EVENT_READ)
    closed: list[socket.socket] = []
    deadline = time.monotonic() + within
    while len(closed) < len(connections) and time.monotonic() < deadline:
        for key, _ in watching.select(timeout=0.2):
            ready = key.fileobj
            assert isinstance(ready, socket.socket)
            try:
                ended = ready.recv(4096) == b""
            except OSError:  # reset
                ended = True
            if ended:
                watching.unregister(ready)
                closed.append(ready)
    watching.close()
    return closed


def _serving(url: str) -> bool:
    try:
        with triton.InferenceServerClient(url) as client:
            return bool(client.is_server_ready(client_timeout=2))
    except Exception:
        return False


def test_connections_that_send_nothing_are_bounded_and_closed(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "loadonce.toml"
    config.write_text(
        "[server]\nmemory_plan = false\nheader_timeout_s = 5\n"
        f"max_connections = {MAX_CONNECTIONS}\n\n"
        '[[models]]\nname = "simple"\nloader = "tests.v2_models:Simple"\n'
    )
    server = start_cli([str(config), "--grpc-port", str(port)], tmp_path)
    url = f"127.0.0.1:{port}"
    connections: list[socket.socket] = []
    try:
        wait_until(lambda: _serving(url), 60, "the gRPC port to answer")
        connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(OPENED)]
        # Those past max_connections at once (a few more may count for a moment: the
        # readiness check's connection, on its way out)...
        past_the_bound = _closed_by_the_server(connections, within=2.5)
        assert len(past_the_bound) >= OPENED - MAX_CONNECTIONS - 2, len(past_the_bound)
        # ... and the others once header_timeout_s passed without an HTTP/2 preface.
        within = [c for c in connections if c not in past_the_bound]
        assert len(_closed_by_the_server(within, within=10)) == len(within)
        assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200
        tensors = []
        for name in ("INPUT0", "INPUT1"):
            tensor = triton.InferInput(name, [1, 16], "INT32")
            tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
            tensors.append(tensor)
        with triton.InferenceServerClient(url) as client:
            answer = client.infer("simple", tensors, client_timeout=10)
        np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), np.full((1, 16), 2))
    finally:
        for connection in connections:
            connection.close()
        stop(server)
    assert "File descriptor limit" not in server.log()


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """An HTTP/2 frame (RFC 9113, 4.1)."""
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _header(name: bytes, value: bytes) -> bytes:
    """An HPACK literal field, not indexed, not Huffman-coded (RFC 7541, 6.2.2)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def _stalled_calls(port: int, count: int) -> socket.socket:
    """One connection with ``count`` ModelInfer calls, each of which sent the first 6 bytes
    of a 100-byte message, and nothing more."""
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b""))
    fields = b"".join(
        _header(name, value)
        for name, value in (
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
            (b":authority", b"localhost"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        )
    )
    for index in range(count):
        stream = 1 + 2 * index
        headers = _frame(1, 0x4, stream, fields)  # END_HEADERS
        # A message of 100 bytes announced (its 5-byte prefix), one of them sent.
        data = _frame(0, 0, stream, b"\x00\x00\x00\x00\x64\x0a")
        connection.sendall(headers + data)
    return connection


def test_calls_whose_message_stops_arriving_give_their_slots_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    spec = loadonce.ModelSpec(name="simple", loader="tests.v2_models:Simple")
    lifespan = grpc_lifespan(port=port, max_concurrent_rpcs=20, message_timeout_s=2)
    url = f"127.0.0.1:{port}"
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton.InferInput(name, [1, 16], "INT32")
        tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.int32))
        tensors.append(tensor)

    def answered() -> bool:
        with triton.InferenceServerClient(url) as client:
            try:
                client.infer("simple", tensors, client_timeout=5)
            except triton.InferenceServerException:
                return False
            return True

    def late() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "loadonce.access" and "/ModelInfer 408" in r.getMessage()
        ]

    with (
        caplog.at_level(logging.INFO, logger="loadonce.access"),
        ThreadedServer(loadonce.create_app([spec], wrap=lifespan)),
    ):
        stalled = _stalled_calls(port, 25)
        try:
            wait_until(lambda: not answered(), 5, "the stalled calls to take every slot")
            # Once their message is two seconds late, they give their slots back (they held
            # them for good), each answered DEADLINE_EXCEEDED, as HTTP's 408.
            wait_until(answered, 10, "a call to be answered again")
            wait_until(lambda: len(late()) == 20, 10, "every stalled call's 408")
        finally:
            stalled.close()


def test_streams_that_send_no_request_give_their_slots_back() -> None:
    """A stream (ModelStreamInfer) whose first request does not arrive within
    message_timeout_s ends DEADLINE_EXCEEDED, as a unary call's late message does: opened
    and left silent, streams would hold every slot of max_concurrent_rpcs for good."""
    port = free_port()
    spec = loadonce.ModelSpec(name="simple", loader="tests.v2_models:Simple")
    lifespan = grpc_lifespan(port=port, max_concurrent_rpcs=3, message_timeout_s=1)
    url = f"127.0.0.1:{port}"
    with ThreadedServer(loadonce.create_app([spec], wrap=lifespan)):
        errors: queue.Queue[Any] = queue.Queue()
        silent = [triton.InferenceServerClient(url) for _ in range(3)]
        for client in silent:
            client.start_stream(lambda result, error: errors.put(error))
        ended = [errors.get(timeout=10) for _ in silent]
        assert all(e.status() == "StatusCode.DEADLINE_EXCEEDED" for e in ended)
        assert "the stream sent no request within 1 s" in ended[0].message()
        with triton.InferenceServerClient(url) as client:
            assert client.is_server_live()
        for client in silent:
            client.stop_stream()
            client.close()


def _ready_on_a_new_connection(url: str) -> str:
    """ServerReady on a connection of its own: "ready", else the error's code."""
    with triton.InferenceServerClient(
        url, channel_args=[("grpc.use_local_subchannel_pool", 1)]
    ) as client:
        try:
            return "ready" if client.is_server_ready(client_timeout=5) else "not ready"
        except triton.InferenceServerException as error:
            return str(error.status())


def test_a_rapid_reset_burst_does_not_refuse_other_clients() -> None:
    # HTTP/2's "rapid reset" (CVE-2023-44487): one connection opens calls and resets each at
    # once. 20,000 of them queued in gRPC's core faster than the worker took them, and every
    # other client's call was CANCELLED for seconds after.
    port = free_port()
    spec = loadonce.ModelSpec(name="simple", loader="tests.v2_models:Simple")
    url = f"127.0.0.1:{port}"
    with ThreadedServer(loadonce.create_app([spec], wrap=grpc_lifespan(port=port))):
        attacker = socket.create_connection(("127.0.0.1", port))
        attacker.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b""))
        fields = b"".join(
            _header(name, value)
            for name, value in (
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/inference.GRPCInferenceService/ServerLive"),
                (b":authority", b"localhost"),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            )
        )
        cancel = struct.pack(">I", 8)  # RST_STREAM's CANCEL
        burst = b"".join(
            _frame(1, 0x4, stream, fields) + _frame(3, 0, stream, cancel)
            for stream in range(1, 40_000, 2)
        )
        with contextlib.suppress(OSError):  # the server may end it before it has all of it
            attacker.sendall(burst)
        answers = [_ready_on_a_new_connection(url) for _ in range(5)]
        attacker.close()
    assert answers == ["ready"] * 5
