"""Connections to the gRPC port that never become calls: bounded in number and in time, as
HTTP's are (``max_connections``, ``header_timeout_s``). A client that opened connections and
sent nothing held each one for good: 20,000 of them used up the worker's file descriptors,
and its HTTP port stopped answering, health probes included."""

from __future__ import annotations

import selectors
import socket
import time
from pathlib import Path

import httpx2 as httpx
import numpy as np
import tritonclient.grpc as triton

from tests.servers import free_port, start_cli, stop, wait_until

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
