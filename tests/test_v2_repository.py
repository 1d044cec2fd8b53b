"""Loading a loaded model through the repository API reloads it without a pause in service."""

from __future__ import annotations

import threading
from collections import Counter

import httpx2 as httpx
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import loadonce
from tests.loaders import Echo
from tests.servers import ThreadedServer


def test_a_reload_answers_every_request_meanwhile() -> None:
    spec = loadonce.ModelSpec(name="echo", loader="tests.loaders:slow_to_load")
    with ThreadedServer(loadonce.create_app([spec])) as running:
        statuses: Counter[int] = Counter()
        done = threading.Event()

        def keep_asking() -> None:
            with httpx.Client(base_url=running.url) as http:
                while not done.is_set():
                    response = http.post("/models/echo/predict", json={"inputs": [1]})
                    statuses[response.status_code] += 1

        asking = threading.Thread(target=keep_asking)
        asking.start()
        try:
            client = triton.InferenceServerClient(running.url.removeprefix("http://"))
            client.load_model("echo")  # takes 0.8 s, while requests keep coming
            assert client.is_model_ready("echo")
            client.close()
        finally:
            done.set()
            asking.join()
        assert set(statuses) == {200}, statuses
        assert statuses[200] >= 5
        info = httpx.get(f"{running.url}/models/echo").json()
        assert (info["state"], info["load_count"]) == ("ready", 2)


def test_a_failed_reload_leaves_the_loaded_model_serving() -> None:
    loads: list[int] = []

    def breaks_on_reload() -> Echo:
        loads.append(1)
        if len(loads) > 1:
            raise RuntimeError("the new artifact is corrupt")
        return Echo()

    spec = loadonce.ModelSpec(name="echo", loader=breaks_on_reload)
    with ThreadedServer(loadonce.create_app([spec])) as running:
        client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        with pytest.raises(InferenceServerException) as failure:
            client.load_model("echo")
        assert failure.value.status() == "400"
        assert "the new artifact is corrupt" in failure.value.message()
        assert client.is_model_ready("echo")
        assert client.is_server_ready()
        client.close()
        response = httpx.post(f"{running.url}/models/echo/predict", json={"inputs": [7]})
        assert response.json()["outputs"][0]["echo"] == 7
        info = httpx.get(f"{running.url}/models/echo").json()
        assert (info["state"], info["load_count"]) == ("ready", 1)


def test_a_failed_load_of_an_unloaded_model_leaves_it_unloaded() -> None:
    """Unloaded on purpose, then a load that fails: it stays unloaded (the error said to the
    client and in its description), and the server stays ready. It was left failed, the
    server unready, in the worker that tried it (the others, not tried, stayed unloaded)."""
    loads: list[int] = []

    def breaks_on_second_load() -> Echo:
        loads.append(1)
        if len(loads) > 1:
            raise RuntimeError("the new artifact is corrupt")
        return Echo()

    specs = [
        loadonce.ModelSpec(name="echo", loader=breaks_on_second_load),
        loadonce.ModelSpec(name="other", loader=Echo),  # a server is never ready with none
    ]
    with ThreadedServer(loadonce.create_app(specs)) as running:
        client = triton.InferenceServerClient(running.url.removeprefix("http://"))
        client.unload_model("echo")
        with pytest.raises(InferenceServerException) as failure:
            client.load_model("echo")
        assert "the new artifact is corrupt" in failure.value.message()
        assert client.is_server_ready()
        assert not client.is_model_ready("echo")
        client.close()
        info = httpx.get(f"{running.url}/models/echo").json()
        assert info["state"] == "unloaded"
        assert "the new artifact is corrupt" in info["error"]
        assert httpx.get(f"{running.url}/readyz").status_code == 200


def test_control_bodies_are_read_as_their_content_encoding_says() -> None:
    """The repository and admin routes read their body raw: a gzip one was "invalid JSON",
    and plain JSON labelled br or zstd was taken (a reload ran). As every route: inflated,
    or 415."""
    import gzip
    import json

    spec = loadonce.ModelSpec(name="echo", loader=Echo)
    with ThreadedServer(loadonce.create_app([spec])) as running:
        body = json.dumps({"parameters": {}}).encode()
        for path in (
            "/v2/repository/index",
            "/v2/repository/models/echo/load",
            "/v2/repository/models/echo/unload",
            "/admin/models/echo/reload",
        ):
            if path.endswith("unload"):
                httpx.post(f"{running.url}/v2/repository/models/echo/load")
            gzipped = httpx.post(
                running.url + path,
                content=gzip.compress(body if "admin" not in path else b"{}"),
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
            assert gzipped.status_code == 200, (path, gzipped.text)
            unknown = httpx.post(
                running.url + path,
                content=body if "admin" not in path else b"{}",
                headers={"Content-Type": "application/json", "Content-Encoding": "br"},
            )
            assert unknown.status_code == 415, (path, unknown.text)
