"""Large JSON bodies: a request of too many examples is refused from its bytes, before it is
parsed; large bodies that fit are answered as before."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

import loadonce
from tests.servers import ThreadedServer


def _sums(batch: Any) -> list[float]:
    return [float(sum(example)) for example in batch]


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    specs = [
        loadonce.ModelSpec(
            name="rows", loader=lambda: _sums, input_shape=(4,), max_request_examples=8
        ),
        loadonce.ModelSpec(
            name="wide", loader=lambda: _sums, input_shape=(300_000,), max_request_examples=2
        ),
        loadonce.ModelSpec(name="any", loader=lambda: lambda b: [len(b)] * len(b), max_queue=8),
        loadonce.ModelSpec(name="many", loader=lambda: _sums, input_shape=(4,), max_queue=500_000),
    ]
    with ThreadedServer(loadonce.create_app(specs)) as running:
        yield running


def _post(server: ThreadedServer, model: str, body: object) -> httpx.Response:
    return httpx.post(
        f"{server.url}/models/{model}/predict", content=json.dumps(body).encode(), timeout=60
    )


@pytest.mark.parametrize(
    ("model", "inputs", "count"),
    [
        ("rows", [[5.1, 3.5, 1.4, 0.2]] * 400_000, 400_000),
        ("any", [{"text": "a, [b]"}] * 100_000, 100_000),
        ("wide", [[0.0] * 300_000] * 3, 3),
    ],
    ids=["rows", "objects with brackets in strings", "wide rows"],
)
def test_too_many_examples_in_a_large_body_are_counted_and_refused(
    server: ThreadedServer, model: str, inputs: list[Any], count: int
) -> None:
    refused = _post(server, model, {"inputs": inputs})
    assert refused.status_code == 413, refused.text[:200]
    assert f"holds {count} examples" in refused.json()["error"]


def test_large_bodies_within_the_limits_are_answered(server: ThreadedServer) -> None:
    # One example of 300,000 numbers is one example, not 300,000.
    one = _post(server, "wide", {"inputs": [1.0] * 300_000})
    assert one.json()["outputs"] == [300_000.0]
    two = _post(server, "wide", {"inputs": [[1.0] * 300_000, [2.0] * 300_000]})
    assert two.json()["outputs"] == [300_000.0, 600_000.0]
    # Escaped characters: not counted from the bytes, parsed as before.
    escaped = _post(server, "any", {"inputs": ['a "quoted" \\ text' + "x" * 300_000]})
    assert escaped.json()["outputs"] == [1]


def test_a_large_body_is_parsed_in_pieces_to_the_same_examples(server: ThreadedServer) -> None:
    rows = [[float(i), 1.0, 2.0, 3.0] for i in range(100_000)]
    answered = _post(server, "many", {"inputs": rows})
    # A large answer is encoded in pieces too: the same JSON as a small one.
    assert answered.json() == {
        "model": "many",
        "version": "1",
        "outputs": [sum(row) for row in rows],
    }
    assert answered.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [[1, 2, 3, 4], ' + b"[1, 2, 3, 4], " * 100_000 + b"]}",  # trailing comma
        b'{"inputs": [[1, 2, 3, 4] ' + b"[1, 2, 3, 4], " * 100_000 + b"[1, 2, 3, 4]]}",
        b'{"inputs": [' + b"[1, 2, 3, 4], " * 100_000 + b'[1, 2, 3, 4]], "extra": 1}',
        b'{"inputs": [' + b"[1, 2, 3, 4], " * 100_000 + b"[1, 2, 3, tru]]}",
    ],
    ids=["trailing comma", "missing comma", "unknown key", "bad literal"],
)
def test_a_malformed_large_body_is_a_422(server: ThreadedServer, body: bytes) -> None:
    refused = httpx.post(f"{server.url}/models/many/predict", content=body, timeout=60)
    assert refused.status_code == 422, refused.text[:300]


def test_a_gzip_body_of_many_members_is_read_in_time_linear_in_its_size(
    server: ThreadedServer,
) -> None:
    """Every gzip member is read (RFC 1952), each after the last. 4 MiB of empty members
    took 30 s of the worker's CPU (what followed each member was copied once per member)
    and held every other compressed body behind it; linear, it is a fraction of a second.
    The bound is 20 times that, for a busy machine."""
    empty = gzip.compress(b"")
    members = empty * (4 * 2**20 // len(empty)) + gzip.compress(b'{"inputs": [[1, 2, 3, 4]]}')
    started = time.monotonic()
    answer = httpx.post(
        f"{server.url}/models/rows/predict",
        content=members,
        headers={"content-type": "application/json", "content-encoding": "gzip"},
        timeout=60,
    )
    took = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"] == [10.0]
    assert took < 5, f"{took:.1f} s"
