"""The generate routes: loadonce's own ``/models/{name}/generate`` and the Open Inference
Protocol's generate extension (``/v2/models/{name}/generate``, ``generate_stream``), over a
predictor of the user's own that generates; whole answers, streams, and every refusal."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

import loadonce
from loadonce import GenerationRequest
from tests.servers import ThreadedServer, wait_until


class Echo(loadonce.Predictor):
    """Yields the prompt's words back, one piece per word."""

    max_new_tokens = 50

    def predict(self, batch: Any) -> list[Any]:
        return list(batch)

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        for word in (request.prompt or "").split():
            yield word + " "


class Paced(Echo):
    """The prompt says how: "<seconds before the first piece> <seconds per piece> <pieces>"."""

    max_new_tokens = 1000

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        first, each, pieces = (request.prompt or "").split()
        time.sleep(float(first))
        for index in range(int(pieces)):
            yield f"{index} "
            time.sleep(float(each))


class Gate(Echo):
    """Yields one piece, then waits for the test to open the gate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.open = threading.Event()

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield "first "
        self.started.set()
        self.open.wait(timeout=30)
        yield "last"


class Breaks(Echo):
    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield "fine "
        raise RuntimeError("secret detail /srv/model/weights.bin")


class Counting(Echo):
    """Yields up to 1000 pieces, slowly, counting them; says when its generator was closed."""

    max_new_tokens = 1000

    def __init__(self) -> None:
        self.made = 0
        self.closed = threading.Event()

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        try:
            for _ in range(1000):
                self.made += 1
                yield "x"
                time.sleep(0.01)
        finally:
            self.closed.set()


def _sum_rows(batch: Any) -> list[float]:
    return [float(sum(row)) for row in batch]


GATE = Gate()


@pytest.fixture(scope="module")
def registry() -> loadonce.Registry:
    return loadonce.Registry(
        [
            loadonce.ModelSpec(name="echo", loader=Echo, version="3"),
            loadonce.ModelSpec(name="paced", loader=Paced),
            loadonce.ModelSpec(name="gate", loader=lambda: GATE, max_queue=1),
            loadonce.ModelSpec(name="breaks", loader=Breaks),
            loadonce.ModelSpec(name="adder", loader=lambda: _sum_rows),
        ]
    )


@pytest.fixture(scope="module")
def client(registry: loadonce.Registry) -> Iterator[TestClient]:
    app = loadonce.create_app(registry)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _events(body: str) -> list[dict[str, Any]]:
    """The data of every Server-Sent Event in ``body``."""
    assert body.endswith("\n\n")
    events = []
    for block in body.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(json.loads(block.removeprefix("data: ")))
    return events


def _stream(client: TestClient, path: str, body: dict[str, Any], **kwargs: Any) -> Any:
    with client.stream("POST", path, json=body, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["x-request-id"]
        return _events(response.read().decode())


# --- POST /models/{name}/generate ------------------------------------------------------------


def test_generate_answers_the_whole_text(client: TestClient) -> None:
    response = client.post("/models/echo/generate", json={"prompt": "the cat sat"})
    assert response.status_code == 200
    assert response.json() == {
        "model": "echo",
        "version": "3",
        "text": "the cat sat ",
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 0, "completion_tokens": 3},
    }


def test_generate_streams_one_event_per_piece_then_why_it_ended(client: TestClient) -> None:
    events = _stream(client, "/models/echo/generate", {"prompt": "the cat sat on", "stream": True})
    assert events == [
        {"text": "the "},
        {"text": "cat "},
        {"text": "sat "},
        {"text": "on "},
        {"finish_reason": "stop", "usage": {"prompt_tokens": 0, "completion_tokens": 4}},
    ]


def test_parameters_stop_the_text(client: TestClient) -> None:
    length = client.post(
        "/models/echo/generate", json={"prompt": "a b c d", "parameters": {"max_new_tokens": 2}}
    ).json()
    assert (length["text"], length["finish_reason"]) == ("a b ", "length")
    stopped = client.post(
        "/models/echo/generate", json={"prompt": "a b c d", "parameters": {"stop": ["c", "z"]}}
    ).json()
    # The stop string ends the text and is not part of it.
    assert (stopped["text"], stopped["finish_reason"]) == ("a b ", "stop")
    events = _stream(
        client,
        "/models/echo/generate",
        {"prompt": "a b c d", "parameters": {"stop": "b c"}, "stream": True},
    )
    assert "".join(event.get("text", "") for event in events) == "a "
    assert events[-1]["finish_reason"] == "stop"


def test_max_new_tokens_over_the_models_cap_is_400(client: TestClient) -> None:
    response = client.post(
        "/models/echo/generate", json={"prompt": "a", "parameters": {"max_new_tokens": 51}}
    )
    assert response.status_code == 400
    assert "from 1 to 50" in response.json()["error"]


def test_a_model_that_does_not_generate_is_400(client: TestClient) -> None:
    response = client.post("/models/adder/generate", json={"prompt": "a"})
    assert response.status_code == 400
    assert "does not generate text" in response.json()["error"]
    assert client.post("/models/nope/generate", json={"prompt": "a"}).status_code == 404


def test_models_say_which_models_generate(client: TestClient) -> None:
    listed = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert listed["echo"]["generates"] is True
    assert listed["adder"]["generates"] is False
    assert listed["echo"]["embeds_text"] is False
    assert client.get("/models/echo").json()["generates"] is True


def test_an_unknown_parameter_is_400_listing_those_accepted(client: TestClient) -> None:
    response = client.post(
        "/models/echo/generate", json={"prompt": "a", "parameters": {"max_tokens": 5}}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert "unknown parameter 'max_tokens'" in error
    assert "max_new_tokens, temperature, top_p, top_k, seed, repetition_penalty, stop" in error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body.prompt"),
        ({"prompt": 3}, "body.prompt"),
        ({"prompt": "a", "stream": "yes"}, "body.stream"),
        ({"prompt": "a", "extra": 1}, "body.extra"),
        ({"prompt": "a", "parameters": {"temperature": "hot"}}, "body.parameters.temperature"),
        ({"prompt": "a", "parameters": {"max_new_tokens": True}}, "body.parameters.max_new_tokens"),
        ({"prompt": "a", "parameters": {"top_p": 1.5}}, "body.parameters.top_p"),
        ({"prompt": "a", "parameters": {"stop": [""]}}, "body.parameters.stop.0"),
        ({"prompt": "a", "parameters": {"stop": ["s"] * 17}}, "body.parameters.stop"),
        ({"prompt": "a", "parameters": {"stop": "s" * 201}}, "body.parameters.stop.0"),
    ],
)
def test_an_invalid_body_is_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/models/echo/generate", json=body)
    assert response.status_code == 422
    assert field in [entry["field"] for entry in response.json()["fields"]]


def test_a_deadline_mid_stream_ends_it_with_the_text_so_far(client: TestClient) -> None:
    events = _stream(
        client,
        "/models/paced/generate",
        {"prompt": "0 0.05 200", "stream": True},
        headers={"X-Request-Timeout": "0.4"},
    )
    assert events[0] == {"text": "0 "}
    last = events[-1]
    assert last["finish_reason"] == "deadline"
    assert 1 <= last["usage"]["completion_tokens"] < 200
    whole = client.post(
        "/models/paced/generate",
        json={"prompt": "0 0.05 200"},
        headers={"X-Request-Timeout": "0.3"},
    ).json()
    assert whole["finish_reason"] == "deadline"
    assert whole["text"].startswith("0 ")


def test_a_deadline_keeps_the_text_held_back_for_a_stop_string_that_never_came(
    client: TestClient, registry: loadonce.Registry
) -> None:
    """Text that could begin a stop string is held back until the next tokens tell; a
    deadline reached meanwhile dropped it, though it was generated and no stop followed:
    "0 1 " was answered "0 "."""
    generation = registry.get("paced").generation
    assert generation is not None
    for stream in (False, True):
        # The step running at the last one's deadline ends first.
        wait_until(lambda: generation.generating == 0, 10, "the model to be free")
        body = {"prompt": "0 1.5 4", "stream": stream, "parameters": {"stop": ["1 2"]}}
        headers = {"X-Request-Timeout": "2.2"}  # "1 " comes at 1.5 s, "2 " at 3 s
        if stream:
            events = _stream(client, "/models/paced/generate", body, headers=headers)
            text = "".join(event.get("text", "") for event in events)
            reason = events[-1]["finish_reason"]
        else:
            answer = client.post("/models/paced/generate", json=body, headers=headers).json()
            text, reason = answer["text"], answer["finish_reason"]
        assert (text, reason) == ("0 1 ", "deadline")


def test_a_generation_done_before_its_deadline_is_whole_for_a_reader_behind() -> None:
    """A stream read slowly (a client behind, a slow network) met its deadline with text
    generated in time still unsent: the stream said "deadline" and dropped it, though the
    generation had ended, whole, well before."""

    async def scenario() -> list[Any]:
        model = loadonce.Model(loadonce.ModelSpec(name="echo", loader=Echo))
        await model.load()
        try:
            events: list[Any] = []
            asked = GenerationRequest(prompt="a b c d")
            async with contextlib.aclosing(model.generate(asked, timeout=0.5)) as stream:
                async for event in stream:
                    events.append(event)
                    await asyncio.sleep(0.3)  # the reader falls behind: 4 pieces take 1.2 s
            return events
        finally:
            await model.unload()

    events = asyncio.run(scenario())
    assert "".join(e.text for e in events if isinstance(e, loadonce.Delta)) == "a b c d "
    assert events[-1].reason == "stop"


def test_a_deadline_before_the_first_token_is_504(client: TestClient) -> None:
    for stream in (False, True):
        response = client.post(
            "/models/paced/generate",
            json={"prompt": "0.5 0 1", "stream": stream},
            headers={"X-Request-Timeout": "0.1"},
        )
        assert response.status_code == 504
        assert "deadline" in response.json()["error"]


def test_a_full_queue_is_503(client: TestClient, registry: loadonce.Registry) -> None:
    answers: list[httpx.Response] = []

    def generate() -> None:
        answers.append(client.post("/models/gate/generate", json={"prompt": "a"}))

    first = threading.Thread(target=generate)
    first.start()
    assert GATE.started.wait(timeout=10)  # generating, its one sequence taken
    second = threading.Thread(target=generate)
    second.start()
    generation = registry.get("gate").generation
    assert generation is not None
    wait_until(lambda: generation.waiting == 1, 10, "the second request to wait its turn")
    try:
        for path in ("/models/gate/generate", "/v2/models/gate/generate_stream"):
            refused = client.post(path, json={"prompt": "a", "text_input": "a"})
            assert refused.status_code == 503
            assert refused.headers["retry-after"] == "1"
    finally:
        GATE.open.set()
        first.join(timeout=30)
        second.join(timeout=30)
    assert [answer.json()["text"] for answer in answers] == ["first last", "first last"]


def test_a_failure_mid_stream_is_a_last_error_event(client: TestClient) -> None:
    events = _stream(client, "/models/breaks/generate", {"prompt": "a", "stream": True}, headers={})
    assert events[0] == {"text": "fine "}
    error = events[-1]
    assert set(error) == {"error", "request_id"}
    assert "the model raised RuntimeError" in error["error"]
    assert error["request_id"] in error["error"]
    assert "secret" not in error["error"]
    whole = client.post("/models/breaks/generate", json={"prompt": "a"})
    assert whole.status_code == 500
    assert "secret" not in whole.text


def test_requests_are_counted_per_route(client: TestClient) -> None:
    client.post("/models/echo/generate", json={"prompt": "a"})
    client.post("/v2/models/echo/generate", json={"text_input": "a"})
    metrics = client.get("/metrics").text
    assert 'model="echo",route="/models/{name}/generate",status="200"' in metrics
    assert 'model="echo",route="/v2/models/{model_name}/generate",status="200"' in metrics


# --- the Open Inference Protocol's generate extension ----------------------------------------


@pytest.mark.parametrize("model", ["/v2/models/echo", "/v2/models/echo/versions/3"])
def test_v2_generate_answers_text_output(client: TestClient, model: str) -> None:
    response = client.post(f"{model}/generate", json={"text_input": "the cat sat"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "model_name": "echo",
        "model_version": "3",
        "text_output": "the cat sat ",
    }


@pytest.mark.parametrize("model", ["/v2/models/echo", "/v2/models/echo/versions/3"])
def test_v2_generate_stream_sends_one_answer_per_piece(client: TestClient, model: str) -> None:
    events = _stream(client, f"{model}/generate_stream", {"text_input": "the cat"})
    head = {"model_name": "echo", "model_version": "3"}
    assert events == [{**head, "text_output": "the "}, {**head, "text_output": "cat "}]


def test_v2_generate_takes_the_backends_parameter_names(client: TestClient) -> None:
    # vLLM's backend: sampling parameters under "parameters", additional outputs on request.
    vllm = client.post(
        "/v2/models/echo/generate",
        json={
            "text_input": "a b c d",
            "parameters": {
                "stream": False,
                "temperature": 0,
                "max_tokens": 3,
                "return_finish_reason": True,
                "return_num_output_tokens": True,
                "return_num_input_tokens": True,
            },
        },
    )
    assert vllm.json() == {
        "model_name": "echo",
        "model_version": "3",
        "text_output": "a b c ",
        "finish_reason": "length",
        "num_input_tokens": 0,
        "num_output_tokens": 3,
    }
    # TensorRT-LLM's ensemble: its inputs as keys of the body, empty word lists for none.
    trtllm = client.post(
        "/v2/models/echo/generate",
        json={"text_input": "a b c d", "max_tokens": 20, "bad_words": "", "stop_words": ""},
    )
    assert trtllm.json()["text_output"] == "a b c d "
    stopped = client.post(
        "/v2/models/echo/generate",
        json={"text_input": "a b c d", "stop_words": ["c"], "random_seed": 1, "top_k": 0},
    )
    assert stopped.json()["text_output"] == "a b "


def test_v2_generate_stream_ends_with_the_outputs_asked_for(client: TestClient) -> None:
    events = _stream(
        client,
        "/v2/models/echo/generate_stream",
        {"text_input": "a b", "parameters": {"return_finish_reason": True}},
    )
    assert [event["text_output"] for event in events] == ["a ", "b ", ""]
    assert events[-1]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"text_input": "a", "parameters": {"beam_width": 2}}, "unknown parameter 'beam_width'"),
        ({"text_input": "a", "max_tokens": 0}, "body.max_tokens"),
        ({"text_input": "a", "parameters": {"max_tokens": "5"}}, "body.parameters.max_tokens"),
        ({"text_input": "a", "max_tokens": 2, "parameters": {"max_new_tokens": 2}}, "same thing"),
        ({"text_input": "a", "bad_words": ["x"]}, "bad_words is not supported"),
        ({"text_input": "a", "return_finish_reason": 1}, "must be true or false"),
        ({"text_input": ["a"]}, "body.text_input"),
        ({"prompt": "a"}, "body.text_input"),
        ({"text_input": "a", "parameters": []}, "body.parameters"),
    ],
)
def test_v2_generate_refuses_in_the_protocols_words(
    client: TestClient, body: dict[str, Any], words: str
) -> None:
    for route in ("generate", "generate_stream"):
        response = client.post(f"/v2/models/echo/{route}", json=body)
        assert response.status_code == 400
        assert list(response.json()) == ["error"]
        assert words in response.json()["error"]


def test_v2_generate_refusals_before_and_after_the_first_token(client: TestClient) -> None:
    assert client.post("/v2/models/adder/generate", json={"text_input": "a"}).status_code == 400
    assert client.post("/v2/models/nope/generate", json={"text_input": "a"}).status_code == 404
    wrong_version = client.post("/v2/models/echo/versions/9/generate", json={"text_input": "a"})
    assert wrong_version.status_code == 404
    not_json = client.post("/v2/models/echo/generate", content=b"{")
    assert not_json.status_code == 400
    events = _stream(client, "/v2/models/breaks/generate_stream", {"text_input": "a"})
    assert events[0]["text_output"] == "fine "
    assert list(events[-1]) == ["error"]
    assert "secret" not in events[-1]["error"]


def test_v2_server_metadata_lists_the_generate_extension(client: TestClient) -> None:
    assert "generate" in client.get("/v2").json()["extensions"]


# --- over a real socket ----------------------------------------------------------------------


def test_a_client_that_goes_away_mid_stream_stops_the_generation() -> None:
    counting = Counting()
    app = loadonce.create_app([loadonce.ModelSpec(name="counting", loader=lambda: counting)])
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        body = {"prompt": "go", "stream": True}
        with http.stream("POST", "/models/counting/generate", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines) == 'data: {"text":"x"}'
        # The client has gone: its generation is closed within a step or two, not after
        # the 1000 pieces (10 s) it would have made.
        assert counting.closed.wait(timeout=5)
        made = counting.made
        assert made < 100
        # And the model is free again.
        answer = http.post(
            "/models/counting/generate", json={"prompt": "go", "parameters": {"max_new_tokens": 2}}
        )
        assert answer.json()["text"] == "xx"


class BreaksOne(Echo):
    """The prompt "break" fails after its first piece; any other yields its words slowly."""

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield "fine "
        if request.prompt == "break":
            raise RuntimeError("this sequence only")
        for word in (request.prompt or "").split():
            time.sleep(0.01)
            yield word + " "


def test_one_generators_failure_ends_its_own_sequence_not_its_batchs() -> None:
    async def scenario() -> tuple[BaseException | str, BaseException | str]:
        spec = loadonce.ModelSpec(name="m", loader=BreaksOne, batching={"max_batch_size": 4})
        model = loadonce.Model(spec)
        await model.load()

        async def text(prompt: str) -> str:
            pieces = []
            async with contextlib.aclosing(model.generate(GenerationRequest(prompt=prompt))) as s:
                async for event in s:
                    if isinstance(event, loadonce.Delta):
                        pieces.append(event.text)
            return "".join(pieces)

        try:
            broken, whole = await asyncio.gather(
                text("break"), text("a b c d"), return_exceptions=True
            )
        finally:
            await model.unload()
        return broken, whole

    broken, whole = asyncio.run(scenario())
    assert isinstance(broken, loadonce.ModelRaisedError)
    assert whole == "fine a b c d "


class Hangs(Echo):
    """Yields one piece, then hangs (its step never returns) until the test lets it go."""

    def __init__(self) -> None:
        self.let_go = threading.Event()

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        yield "first "
        self.let_go.wait(timeout=30)
        yield "last"


def test_a_generation_step_past_hang_timeout_makes_the_model_unhealthy_until_it_returns() -> None:
    """A step that never returned took the model out of service (each later request 504)
    while /readyz said ready, no hung call counted, nothing logged: hang detection watched
    predict calls only."""
    hangs = Hangs()
    spec = loadonce.ModelSpec(name="hangs", loader=lambda: hangs, hang_timeout_s=0.5)
    app = loadonce.create_app([spec])
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            stream = threading.Thread(
                target=client.post,
                args=("/models/hangs/generate",),
                kwargs={"json": {"prompt": "x"}},
                daemon=True,
            )
            stream.start()

            def hung() -> bool:
                answer = client.get("/readyz")
                return answer.status_code == 503 and answer.json()["hung_calls"] == {"hangs": 1}

            wait_until(hung, 10, "the hung generation step said on /readyz")
            metrics = client.get("/metrics").text
            assert 'loadonce_model_hung_calls{model="hangs"} 1.0' in metrics
            hangs.let_go.set()
            stream.join(timeout=10)
            wait_until(lambda: client.get("/readyz").status_code == 200, 10, "healthy again")
    finally:
        hangs.let_go.set()
