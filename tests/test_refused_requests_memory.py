"""A request answered with an error lets go of its memory at once, by reference counting: its
parsed body, and the batch's inputs the failed call held. An exception that came through a
future kept them in a reference cycle (frames, future, exception) that only an older
generation's rare collection freed: a hundred refused 2.4 MiB bodies kept a worker hundreds of
MiB larger. Checked with the garbage collector off: what is not freed by then never would be
without it."""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import loadonce
from loadonce.core.generation import GenerationRequest
from tests.servers import wait_until

ROWS, WIDTH = 200, 30
received: list[weakref.ref[Any]] = []


class Raises(loadonce.Predictor):
    """Fails every call; remembers (weakly) each batch it was given."""

    max_new_tokens = 4

    def predict(self, batch: Any) -> list[Any]:
        received.append(weakref.ref(batch))
        raise ValueError("this model always fails")

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield "a"
        raise ValueError("this model fails midway")


def _raises() -> Raises:
    return Raises()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    options = {"input_dtype": "float64"}
    specs = [
        loadonce.ModelSpec(name="raises", loader=_raises, input_shape=[WIDTH], options=options),
        loadonce.ModelSpec(
            name="sums",
            loader=lambda: lambda batch: [float(np.sum(x)) for x in batch],
            input_shape=[WIDTH],
        ),
    ]
    with TestClient(loadonce.create_app(specs), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The collector off, and loadonce's log kept from pytest's capture, whose records hold
    each logged error's traceback (a server's handlers write a record and let it go)."""
    log = logging.getLogger("loadonce")
    log.disabled = True
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        log.disabled = False


JSON_BODY = {"inputs": [[0.5] * WIDTH] * ROWS}
V2_BODY = {
    "inputs": [
        {
            "name": "input",
            "shape": [ROWS, WIDTH],
            "datatype": "FP64",
            "data": [0.5] * (ROWS * WIDTH),
        }
    ]
}


@pytest.mark.parametrize(
    ("path", "body"), [("/models/raises/predict", JSON_BODY), ("/v2/models/raises/infer", V2_BODY)]
)
@pytest.mark.usefixtures("collector_off")
def test_the_inputs_of_a_failed_call_are_freed_once_it_is_answered(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    received.clear()
    answer = client.post(path, json=body)
    assert answer.status_code == 500
    [batch] = received
    assert batch() is None  # freed without the collector


def _garbage_per_request(client: TestClient, path: str, body: Any, requests: int = 10) -> float:
    gc.collect()
    for _ in range(requests):
        client.post(path, json=body)
    return gc.collect() / requests


@pytest.mark.usefixtures("collector_off")
def test_a_refused_body_leaves_no_more_garbage_than_an_answered_one(client: TestClient) -> None:
    # What is left for the collector after a request that is answered (the test client's own
    # cycles) is the yardstick: a refused body's 200 rows used to be among it.
    answered = _garbage_per_request(client, "/models/sums/predict", JSON_BODY)
    wrong_width = {"inputs": [[0.5] * (WIDTH + 1)] * ROWS}
    refused = _garbage_per_request(client, "/models/sums/predict", wrong_width)
    failed = _garbage_per_request(client, "/models/raises/predict", JSON_BODY)
    assert refused < answered + ROWS / 4, (refused, answered)
    assert failed < answered + ROWS / 4, (failed, answered)


@pytest.mark.usefixtures("collector_off")
def test_a_stream_that_failed_midway_leaves_no_more_garbage_than_an_answered_request(
    client: TestClient,
) -> None:
    answered = _garbage_per_request(client, "/models/sums/predict", JSON_BODY)
    body = {"model": "raises", "prompt": "x" * 100_000, "stream": True}
    streamed = _garbage_per_request(client, "/v1/completions", body)
    assert streamed < answered + ROWS / 4, (streamed, answered)


@pytest.mark.usefixtures("collector_off")
def test_an_answered_requests_inputs_are_not_kept_while_the_model_waits_for_the_next(
    client: TestClient,
) -> None:
    # The dispatcher held its last batch (the requests, their inputs and answers) until the
    # next request came. 777 rows: a length no other list here has.
    # (No list of 777 is kept here: the body is built in the call.)
    assert client.post("/models/sums/predict", json={"inputs": [[0.25] * WIDTH] * 777}).is_success

    def kept() -> int:  # the call's metrics are written just after its answers left
        return sum(1 for found in gc.get_objects() if isinstance(found, list) and len(found) == 777)

    wait_until(lambda: kept() == 0, timeout=5, what="the request's inputs to be let go")
