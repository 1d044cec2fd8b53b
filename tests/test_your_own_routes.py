"""What ``await model.predict(...)`` raises in a route of the user's own app is answered as
loadonce's routes answer it (``install_middleware``): a client error a 4xx, a full queue a
503 with Retry-After, a passed deadline a 504, each in JSON with its request id. They were
plain-text 500s, without a request id, each logged as an unhandled exception."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

import loadonce


class _Pairs(loadonce.Predictor):
    """Rows of two numbers; a row starting with a negative number takes a second."""

    signature = loadonce.InputSignature(shape=(2,), dtype="float64")

    def predict(self, batch: Any) -> list[Any]:
        if any(row[0] < 0 for row in batch):
            time.sleep(1)
        return [float(row.sum()) for row in batch]


pairs = loadonce.ModelDependency("pairs")


def _app(*, own_handler: bool = False) -> FastAPI:
    spec = loadonce.ModelSpec(name="pairs", loader=_Pairs, timeout_s=0.2)
    app = FastAPI(lifespan=loadonce.lifespan([spec]))
    loadonce.install_middleware(app)

    @app.post("/mine")
    async def mine(
        body: dict[str, Any], model: Annotated[loadonce.Model, Depends(pairs)]
    ) -> dict[str, Any]:
        return {"sum": await model.predict(body["x"])}

    if own_handler:

        @app.exception_handler(loadonce.LoadonceError)
        async def teapot(request: Request, exc: loadonce.LoadonceError) -> JSONResponse:
            return JSONResponse({"mine": str(exc)}, status_code=418)

    return app


def test_loadonces_errors_in_your_own_route_are_answered_as_loadonces() -> None:
    with TestClient(_app()) as client:
        assert client.post("/mine", json={"x": [1, 2]}).json() == {"sum": [3.0]}
        wrong = client.post("/mine", json={"x": [1, 2, 3]}, headers={"X-Request-ID": "w-1"})
        assert wrong.status_code == 400
        assert wrong.json() == {
            "error": "invalid inputs: each example must be an array of shape [2] of numbers; "
            "got shape [3]",
            "request_id": "w-1",
        }
        assert wrong.headers["x-request-id"] == "w-1"
        late = client.post("/mine", json={"x": [-1, 2]})
        assert late.status_code == 504
        assert "did not answer within the deadline" in late.json()["error"]


def test_a_handler_of_your_own_for_loadonces_errors_wins() -> None:
    with TestClient(_app(own_handler=True)) as client:
        answer = client.post("/mine", json={"x": [1, 2, 3]})
        assert answer.status_code == 418
        assert "each example must be an array of shape [2]" in answer.json()["mine"]


def test_a_predict_from_another_event_loop_fails_at_once_saying_how() -> None:
    """``asyncio.run(model.predict(...))`` in a sync route queued the request on the app's
    batcher from another loop, whose future nothing ever resolved: the route hung for good,
    its thread with it (and a server's stop waited for it). It is refused at once, saying
    what to call; anyio.from_thread.run works."""
    import asyncio

    import anyio.from_thread
    import httpx2 as httpx

    from tests.servers import ThreadedServer

    app = _app()

    @app.post("/sync-wrong")
    def sync_wrong(body: dict[str, Any], model: Annotated[loadonce.Model, Depends(pairs)]) -> Any:
        return {"sum": asyncio.run(model.predict(body["x"]))}

    @app.post("/sync-right")
    def sync_right(body: dict[str, Any], model: Annotated[loadonce.Model, Depends(pairs)]) -> Any:
        return {"sum": anyio.from_thread.run(model.predict, body["x"])}

    with ThreadedServer(app) as server:
        wrong = httpx.post(f"{server.url}/sync-wrong", json={"x": [1, 2]}, timeout=10)
        assert wrong.status_code == 500
        right = httpx.post(f"{server.url}/sync-right", json={"x": [1, 2]}, timeout=10)
        assert right.json() == {"sum": [3.0]}


def test_keys_and_limits_without_their_middleware_refuse_to_start() -> None:
    """API keys, limits and allowed hosts given to the lifespan act through
    install_middleware: an app without it served every route without a key and read any
    body, without a word. It now fails at startup, saying what to call."""
    import pytest

    keys = loadonce.AccessKeys(admin=("a" * 24,))
    spec = loadonce.ModelSpec(name="pairs", loader=_Pairs)
    app = FastAPI(lifespan=loadonce.lifespan([spec], access=keys))
    app.include_router(loadonce.models_router())
    refused = pytest.raises(loadonce.LoadonceError, match=r"install_middleware\(app\)")
    with refused, TestClient(app):
        pass


def _failing_app(*, handler: bool = False) -> tuple[FastAPI, list[str]]:
    """A user's app whose own route raises; ``handler``: with its own handler for
    ``Exception``. The list records each call of that handler."""
    app = _app()
    handled: list[str] = []

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("cannot open /srv/secret/config.yaml")

    if handler:

        @app.exception_handler(Exception)
        async def own(request: Request, exc: Exception) -> JSONResponse:
            handled.append(type(exc).__name__)
            return JSONResponse({"mine": "something went wrong"}, status_code=500)

    return app, handled


def test_a_failing_route_of_your_own_answers_500_with_its_request_id() -> None:
    """Starlette's ServerErrorMiddleware, outside loadonce's, answered a plain "Internal
    Server Error" without X-Request-ID: nothing tied the client's 500 to the server's
    traceback. Now the 500 is loadonce's (its body in the path's protocol, the request id,
    no message of the exception's, no path), the exception is still raised to the server
    (which logs its traceback, the request id among its notes), and the access line says
    500 under that id."""
    import logging

    import httpx2 as httpx

    from tests.servers import ThreadedServer

    app, _ = _failing_app()
    access = logging.getLogger("loadonce.access")
    lines: list[str] = []
    failures: list[BaseException] = []

    class _Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name == "loadonce.access":
                lines.append(record.getMessage())
            elif record.exc_info and record.exc_info[1] is not None:
                failures.append(record.exc_info[1])

    kept = _Kept()
    server = ThreadedServer(app)  # configures uvicorn's loggers: the handler goes on after
    uvicorn_errors = logging.getLogger("uvicorn.error")
    access.addHandler(kept)
    uvicorn_errors.addHandler(kept)
    level = access.level
    access.setLevel(logging.INFO)
    try:
        with server:
            answer = httpx.get(f"{server.url}/boom", headers={"X-Request-ID": "boom-1"})
            plain = httpx.get(f"{server.url}/boom")
    finally:
        access.setLevel(level)
        access.removeHandler(kept)
        uvicorn_errors.removeHandler(kept)
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "boom-1"
    assert answer.json() == {
        "error": "the server failed (RuntimeError); the server log has the details under "
        "request id boom-1",
        "request_id": "boom-1",
    }
    assert plain.status_code == 500
    assert plain.json()["request_id"] == plain.headers["x-request-id"]
    assert "secret" not in answer.text
    assert "Traceback" not in answer.text
    assert any(line.startswith("GET /boom 500 ") and "request_id=boom-1" in line for line in lines)
    assert [getattr(failure, "__notes__", None) for failure in failures][:1] == [
        ["loadonce request id: boom-1"]
    ], failures


def test_a_test_client_still_raises_what_your_route_raised_with_its_request_id() -> None:
    import pytest

    app, _ = _failing_app()
    with TestClient(app) as client, pytest.raises(RuntimeError) as raised:
        client.get("/boom", headers={"X-Request-ID": "t-1"})
    assert raised.value.__notes__ == ["loadonce request id: t-1"]
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom", headers={"X-Request-ID": "t-2"})
    assert (answer.status_code, answer.headers["x-request-id"]) == (500, "t-2")


def test_your_own_handler_for_exceptions_answers_once_with_the_request_id() -> None:
    """The app's handler for ``Exception`` answers, as Starlette has it answer, once (it runs
    in front of Starlette's, which would have called it a second time), its answer carrying
    the request id; the failure is logged under that id."""
    import logging

    app, handled = _failing_app(handler=True)
    errors: list[logging.LogRecord] = []

    class _Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record)

    kept = _Kept(level=logging.ERROR)
    logging.getLogger("loadonce").addHandler(kept)
    try:
        with TestClient(app) as client:
            answer = client.get("/boom", headers={"X-Request-ID": "h-1"})
    finally:
        logging.getLogger("loadonce").removeHandler(kept)
    assert answer.status_code == 500
    assert answer.json() == {"mine": "something went wrong"}
    assert answer.headers["x-request-id"] == "h-1"
    assert handled == ["RuntimeError"]
    [logged] = [record for record in errors if "h-1" in record.getMessage()]
    assert "RuntimeError: cannot open" in logged.getMessage()
    assert logged.exc_info is not None


def test_installing_the_middleware_twice_installs_it_once() -> None:
    """A second install_middleware (on create_app's app, which has it) stacked loadonce's
    middlewares twice: every request logged twice, its checks run twice."""
    import logging

    app = loadonce.create_app([loadonce.ModelSpec(name="pairs", loader=_Pairs)])
    loadonce.install_middleware(app)
    assert len(app.user_middleware) == 2
    lines: list[str] = []

    class _Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    access = logging.getLogger("loadonce.access")
    kept, level = _Kept(), access.level
    access.addHandler(kept)
    access.setLevel(logging.INFO)
    try:
        with TestClient(app) as client:
            answer = client.post("/models/pairs/predict", json={"inputs": [[1, 2]]})
    finally:
        access.setLevel(level)
        access.removeHandler(kept)
    assert answer.json()["outputs"] == [3.0]
    assert [line.split(" ")[:3] for line in lines] == [["POST", "/models/pairs/predict", "200"]]
