"""The bytes of request bodies a worker holds at once (``max_body_bytes_in_flight``), over
HTTP and gRPC together: ``max_body_bytes`` bounds one body and ``max_connections`` the
requests, and without a bound on their sum a worker held 1,000 bodies of 64 MiB (and a gzip
body of 64 KiB inflated to 64 MiB). Past the budget a request is a 503 with Retry-After
(gRPC UNAVAILABLE); what a request held is given back when it ends, however it ends."""

from __future__ import annotations

import gzip
import queue
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx2 as httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc

import loadonce
from loadonce.protocols.grpc import grpc_lifespan
from loadonce.server.settings import resolve_server_options
from tests.servers import ThreadedServer, free_port, wait_until

KIB = 1024
BUDGET = 64 * KIB
# What the holding client sends of its body before it stalls.
HELD = 48 * KIB


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ThreadedServer, str]]:
    specs = [
        loadonce.ModelSpec(name="echo", loader="tests.loaders:echo"),
        loadonce.ModelSpec(name="simple", loader="tests.v2_models:Simple"),
    ]
    port = free_port()
    app = loadonce.create_app(
        specs,
        limits=loadonce.Limits(max_body_bytes_in_flight=BUDGET),
        wrap=grpc_lifespan(port=port),
    )
    with ThreadedServer(app) as running:
        yield running, f"127.0.0.1:{port}"


def _body_of(size: int) -> bytes:
    """A JSON body of ``size`` bytes for the echo model."""
    head, tail = b'{"inputs": [[', b"]]}"
    count = (size - len(head) - len(tail) + 1) // 2
    body = head + b",".join([b"1"] * count) + tail
    return body + b" " * (size - len(body))


class _Holder:
    """A client that sent part of a body and waits: the server holds what it sent."""

    def __init__(self, server: ThreadedServer, sent: int, *, chunked: bool) -> None:
        self.body = _body_of(sent + 4 * KIB)
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        framing = (
            b"Transfer-Encoding: chunked\r\n"
            if chunked
            else b"Content-Length: %d\r\n" % len(self.body)
        )
        self.chunked = chunked
        self.sock.sendall(
            b"POST /models/echo/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + framing + b"\r\n"
        )
        self._send(self.body[:sent])
        self.rest = self.body[sent:]

    def _send(self, data: bytes) -> None:
        self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    def finish(self) -> bytes:
        """Send the rest of the body; the answer's status line."""
        self._send(self.rest)
        if self.chunked:
            self.sock.sendall(b"0\r\n\r\n")
        answer = self.sock.recv(65536)
        self.sock.close()
        return answer.split(b"\r\n", 1)[0]

    def leave(self) -> None:
        """Disconnect mid-body."""
        self.sock.close()


def _post(server: ThreadedServer, size: int, **headers: str) -> httpx.Response:
    body = _body_of(size)
    if headers.get("Content-Encoding") == "gzip":
        body = gzip.compress(body)
    return httpx.post(
        f"{server.url}/models/echo/predict",
        content=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=10,
    )


def _grpc_infer(url: str, elements: int) -> None:
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        tensor = triton.InferInput(name, [elements // 16, 16], "INT32")
        tensor.set_data_from_numpy(np.ones((elements // 16, 16), dtype=np.int32))
        tensors.append(tensor)
    with triton.InferenceServerClient(url) as client:
        client.infer("simple", tensors, client_timeout=10)


def _grpc_stream(url: str, sizes: list[int]) -> list[tuple[Any, Any]]:
    """Requests of ``sizes`` elements in one stream: each one's (result, error)."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    with triton.InferenceServerClient(url) as client:
        client.start_stream(lambda result, error: answers.put((result, error)))
        for elements in sizes:
            tensors = []
            for name in ("INPUT0", "INPUT1"):
                tensor = triton.InferInput(name, [elements // 16, 16], "INT32")
                tensor.set_data_from_numpy(np.ones((elements // 16, 16), dtype=np.int32))
                tensors.append(tensor)
            client.async_stream_infer("simple", tensors)
        received = [answers.get(timeout=10) for _ in sizes]
        client.stop_stream()
    return received


def _refused_while_held(server: ThreadedServer) -> bool:
    return _post(server, 20 * KIB).status_code == 503


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_past_the_budget_a_body_is_refused_until_the_held_ones_end(
    server: tuple[ThreadedServer, str], chunked: bool
) -> None:
    http, grpc_url = server
    holder = _Holder(http, HELD, chunked=chunked)
    try:
        wait_until(lambda: _refused_while_held(http), 5, "the held body to count")
        refused = _post(http, 20 * KIB)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert "max_body_bytes_in_flight" in refused.json()["error"]
        assert "X-Request-ID" in refused.headers
        # Every route that reads a body: the Open Inference Protocol's too.
        rows = 20 * KIB // 70
        v2 = httpx.post(
            f"{http.url}/v2/models/simple/infer",
            json={
                "inputs": [
                    {"name": n, "datatype": "INT32", "shape": [rows, 16], "data": [1] * rows * 16}
                    for n in ("INPUT0", "INPUT1")
                ]
            },
            timeout=10,
        )
        assert v2.status_code == 503, v2.text
        assert "max_body_bytes_in_flight" in v2.json()["error"]
        # What fits beside the held body is served.
        assert _post(http, 4 * KIB).status_code == 200
        # A gzip body is counted as it inflates: 20 KiB of JSON in a few hundred bytes.
        compressed = _post(http, 20 * KIB, **{"Content-Encoding": "gzip"})
        assert compressed.status_code == 503, compressed.text
        # gRPC's messages count in the same budget: 2 x 16 KiB of INT32 does not fit.
        with pytest.raises(triton.InferenceServerException) as raised:
            _grpc_infer(grpc_url, 4096)
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
        assert "max_body_bytes_in_flight" in str(raised.value.message())
        _grpc_infer(grpc_url, 256)  # 2 KiB fits
        # A stream's requests count one at a time: the one that does not fit is answered
        # with its error in the stream, which goes on (it ended the stream).
        [(_, too_many), (served, fine)] = _grpc_stream(grpc_url, [4096, 256])
        assert "max_body_bytes_in_flight" in too_many.message()
        assert fine is None
        assert served.as_numpy("OUTPUT0").shape == (16, 16)
    finally:
        status = holder.finish()
    assert status == b"HTTP/1.1 200 OK"
    # Its bytes given back: the same bodies are served again.
    assert _post(http, 20 * KIB).status_code == 200
    assert _post(http, 20 * KIB, **{"Content-Encoding": "gzip"}).status_code == 200
    _grpc_infer(grpc_url, 4096)


def test_a_body_alone_over_the_budget_is_served(server: tuple[ThreadedServer, str]) -> None:
    """The budget bounds bodies together: one body is bounded by max_body_bytes."""
    http, grpc_url = server
    assert _post(http, 2 * BUDGET).status_code == 200
    assert _post(http, 2 * BUDGET, **{"Content-Encoding": "gzip"}).status_code == 200
    _grpc_infer(grpc_url, 2 * BUDGET // 8)


def test_every_way_a_request_ends_gives_its_bytes_back(
    server: tuple[ThreadedServer, str],
) -> None:
    http, grpc_url = server
    for _ in range(3):
        # A client that leaves mid-body, one refused for the budget, one that is not JSON,
        # one whose gzip is broken, a gRPC call refused, a model answering an error.
        leaving = _Holder(http, HELD, chunked=False)
        wait_until(lambda: _refused_while_held(http), 5, "the held body to count")
        with pytest.raises(triton.InferenceServerException):
            _grpc_infer(grpc_url, 4096)
        leaving.leave()
        wait_until(lambda: not _refused_while_held(http), 5, "the left body to be given back")
        assert _post(http, 1 * KIB, **{"Content-Encoding": "gzip"}).status_code == 200
        not_json = httpx.post(f"{http.url}/models/echo/predict", content=b"{" * 2000, timeout=10)
        assert not_json.status_code in (400, 422)
        broken = httpx.post(
            f"{http.url}/models/echo/predict",
            content=gzip.compress(_body_of(8 * KIB))[:-20],
            headers={"Content-Encoding": "gzip"},
            timeout=10,
        )
        assert broken.status_code == 400
        bad_v2 = httpx.post(f"{http.url}/v2/models/simple/infer", json={"inputs": []}, timeout=10)
        assert bad_v2.status_code == 400
    # Nothing was kept: a body of 48 KiB held and one of 15 KiB fit the 64 KiB budget only
    # if every request above gave back all it held.
    holder = _Holder(http, HELD, chunked=False)
    try:
        time.sleep(0.3)
        assert _post(http, 15 * KIB).status_code == 200
    finally:
        assert holder.finish() == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize(("value", "limit"), [("4096", 4096), ("0", None)])
def test_the_budget_is_a_setting_of_loadonce_serve(
    monkeypatch: pytest.MonkeyPatch, value: str, limit: int | None
) -> None:
    monkeypatch.setenv("LOADONCE_MAX_BODY_BYTES_IN_FLIGHT", value)
    options = resolve_server_options({}, {})
    assert options.limits().max_body_bytes_in_flight == limit
    assert resolve_server_options({"max_body_bytes_in_flight": 8}, {}).limits() == (
        options.limits()
    )


@pytest.fixture(scope="module")
def mib_budget() -> Iterator[tuple[ThreadedServer, str]]:
    port = free_port()
    app = loadonce.create_app(
        [
            loadonce.ModelSpec(name="echo", loader="tests.loaders:echo"),
            loadonce.ModelSpec(
                name="simple", loader="tests.v2_models:Simple", max_request_examples=10_000
            ),
        ],
        limits=loadonce.Limits(max_body_bytes_in_flight=1024 * KIB),
        wrap=grpc_lifespan(port=port),
    )
    with ThreadedServer(app) as running:
        yield running, f"127.0.0.1:{port}"


def test_a_grpc_message_counts_what_its_parse_makes_of_it(
    mib_budget: tuple[ThreadedServer, str],
) -> None:
    """Protobuf makes a packed INT32 of one byte four bytes (eight, as its arena grows): a
    message of 196 KiB of typed contents holds 1.6 MB once parsed, and is counted so."""
    http, url = mib_budget
    rows = 6250  # x 16 = 100,000 ones per input
    request = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=[rows, 16])
        tensor.contents.int_contents.extend([1] * rows * 16)
    assert 190 * KIB < request.ByteSize() < 200 * KIB

    def infer() -> service_pb2.ModelInferResponse:
        with grpc.insecure_channel(url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            answer: service_pb2.ModelInferResponse = stub.ModelInfer(request, timeout=10)
            return answer

    holder = _Holder(http, 600 * KIB, chunked=False)
    try:
        wait_until(lambda: _post(http, 500 * KIB).status_code == 503, 5, "the held body to count")
        # 600 KiB held and 196 KiB of message fit the budget; its parse does not.
        with pytest.raises(grpc.RpcError) as raised:
            infer()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        assert holder.finish() == b"HTTP/1.1 200 OK"
    assert infer().model_name == "simple"
