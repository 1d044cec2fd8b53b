"""A model's code may raise anything, SystemExit and GeneratorExit included, or an exception
that cannot even say what it is: each is that request's 500 (JSON, with its request id), and
the server, the model and its other requests go on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

import loadonce


class _OwnBase(BaseException):
    pass


class _UnreadableMessageError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message")


def _raising(error: BaseException) -> Callable[[], Callable[[list[Any]], list[Any]]]:
    def load() -> Callable[[list[Any]], list[Any]]:
        def predict(batch: list[Any]) -> list[Any]:
            if any(value < 0 for value in batch):
                raise error
            return [value * 2 for value in batch]

        return predict

    return load


@pytest.mark.parametrize(
    "error",
    [
        SystemExit(0),
        KeyboardInterrupt(),
        GeneratorExit(),
        asyncio.CancelledError(),
        _OwnBase("own"),
        _UnreadableMessageError(),
    ],
    ids=[
        "SystemExit",
        "KeyboardInterrupt",
        "GeneratorExit",
        "CancelledError",
        "BaseException",
        "unreadable",
    ],
)
@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_whatever_the_model_raises_is_that_requests_500(
    error: BaseException, batching: bool
) -> None:
    """The answer names the model (with several served, "the model raised" said not which)."""
    specs = [
        loadonce.ModelSpec(name="m", loader=_raising(error), timeout_s=10, batching=batching),
        loadonce.ModelSpec(name="other", loader=_raising(ValueError())),
    ]
    with TestClient(loadonce.create_app(specs)) as client:
        for route, body in [
            ("/models/m/predict", {"inputs": [-1]}),
            (
                "/v2/models/m/infer",
                {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [-1]}]},
            ),
        ]:
            failed = client.post(route, json=body)
            assert failed.status_code == 500
            message = failed.json()["error"]
            assert message.startswith(f"the model raised {type(error).__name__} (model 'm');")
            assert failed.headers["x-request-id"] in message
            assert "Traceback" not in message
            assert "/" not in message
        # In a batch with it, the other requests are answered; the server is still ready.
        assert client.post("/models/m/predict", json={"inputs": [3]}).json()["outputs"] == [6]
        assert client.post("/models/other/predict", json={"inputs": [1]}).status_code == 200
        assert client.get("/readyz").status_code == 200


def test_a_huge_exception_message_is_cut_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """A model's 5 MB message made a 5 MB log line."""
    spec = loadonce.ModelSpec(name="m", loader=_raising(ValueError("x" * 1_000_000)))
    with TestClient(loadonce.create_app([spec])) as client:
        failed = client.post("/models/m/predict", json={"inputs": [-1]})
        assert failed.status_code == 500
    described = [r.getMessage() for r in caplog.records if "the model raised" in r.getMessage()]
    assert described
    assert all(len(message) < 5_000 for message in described)
    assert any("more characters" in message for message in described)


class _Generates(loadonce.Predictor):
    """Generates "ok "; a prompt holding "boom" raises ``error``."""

    max_new_tokens = 16

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)

    def generate(self, request: Any) -> Iterator[str]:
        if "boom" in (request.prompt or ""):
            raise self.error
        yield "ok "


@pytest.mark.parametrize(
    "error",
    [SystemExit(2), KeyboardInterrupt(), GeneratorExit(), _OwnBase("own")],
    ids=["SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException"],
)
def test_whatever_a_generating_model_raises_is_that_requests_500(error: BaseException) -> None:
    """SystemExit from generate() unloaded every model of the worker (and stopped gRPC);
    GeneratorExit left the request unanswered."""
    specs = [
        loadonce.ModelSpec(name="gen", loader=lambda: _Generates(error), timeout_s=10),
        loadonce.ModelSpec(name="other", loader=lambda: _Generates(error)),
    ]
    with TestClient(loadonce.create_app(specs)) as client:
        failed = client.post("/v1/completions", json={"model": "gen", "prompt": "boom"})
        assert failed.status_code == 500
        assert failed.json()["error"]["type"] == "server_error"
        assert "(model 'gen')" in failed.json()["error"]["message"]
        for name in ("gen", "other"):
            answered = client.post("/v1/completions", json={"model": name, "prompt": "hi"})
            assert answered.status_code == 200, answered.text
        assert client.get("/readyz").status_code == 200


class _FailsToClose(loadonce.Predictor):
    """Echoes; its close records its name in ``closed``, then raises ``error`` (if any)."""

    def __init__(self, name: str, closed: list[str], error: BaseException | None) -> None:
        self.name, self.closed, self.error = name, closed, error

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)

    def close(self) -> None:
        self.closed.append(self.name)
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    "error",
    [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), asyncio.CancelledError(), _OwnBase()],
    ids=["SystemExit", "KeyboardInterrupt", "GeneratorExit", "CancelledError", "BaseException"],
)
def test_whatever_a_models_close_raises_is_logged_and_the_rest_goes_on(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """Raised on the event loop, it ended the reload that retired the instance (the client
    got no answer, the test client its exception) and, at shutdown, the unload of the
    models after it."""
    closed: list[str] = []
    specs = [
        loadonce.ModelSpec(name="a", loader=lambda: _FailsToClose("a", closed, error)),
        loadonce.ModelSpec(name="b", loader=lambda: _FailsToClose("b", closed, None)),
    ]
    with TestClient(loadonce.create_app(specs)) as client:
        reloaded = client.post("/admin/models/a/reload", json={})
        assert reloaded.status_code == 200, reloaded.text
        assert closed == ["a"]
        assert client.post("/models/a/predict", json={"inputs": [1]}).json()["outputs"] == [1]
        assert client.get("/readyz").status_code == 200
    assert sorted(closed) == ["a", "a", "b"], "every model unloaded at shutdown"
    said = [r.getMessage() for r in caplog.records if "failed to close" in r.getMessage()]
    assert len(said) == 2
    assert all(type(error).__name__ in line for line in said)
