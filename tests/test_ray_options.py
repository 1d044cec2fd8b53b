"""The [ray] table is checked as Ray checks it, before Ray starts: a value Ray refuses once
started stopped the server with status 3 (a model's failed load) and the first line of its
error, which named no field. The Serve config file `ray-config` prints holds only what a
Serve config file may set, and a replica's app takes the [server] table as a worker's does."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

import loadonce
from loadonce.server.settings import RayOptions, ServeConfig, ServerOptions


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"max_queued_requests": 0}, "must be -1 (no bound) or at least 1"),
        (
            {"num_replicas": "auto", "autoscaling_config": {"min_replicas": 3, "max_replicas": 1}},
            "min_replicas (3) is above max_replicas (1)",
        ),
        ({"route_prefix": "/api/"}, "route_prefix"),
        ({"route_prefix": "/a{x}"}, "route_prefix"),
        ({"ray_actor_options": {"num_cpus": -1}}, "num_cpus cannot be negative"),
        ({"max_ongoing_requests": 10**22}, "max_ongoing_requests"),
    ],
)
def test_what_ray_would_refuse_is_refused_first(options: dict[str, Any], said: str) -> None:
    with pytest.raises(ValidationError, match=said.replace("(", r"\(").replace(")", r"\)")):
        RayOptions.model_validate(options)


def test_what_ray_takes_is_taken() -> None:
    for route in ("/", "/api", "/a/b"):
        assert RayOptions(route_prefix=route).route_prefix == route
    assert RayOptions(max_queued_requests=-1).max_queued_requests == -1


def _config(**server: Any) -> ServeConfig:
    spec = loadonce.ModelSpec(name="m", loader="tests.loaders:echo")
    return ServeConfig(server=ServerOptions(**server), models=[spec])


def test_the_printed_serve_config_offers_only_what_ray_reads() -> None:
    from loadonce.server.on_ray import ray_config_document

    document = ray_config_document(_config(), config_path=None, demo=True, trust=False)
    [deployment] = document["applications"][0]["deployments"]
    # Ray's ServeDeploySchema drops it silently: an edit there changed nothing.
    assert "max_constructor_retry_count" not in deployment
    assert deployment["max_ongoing_requests"] == 256


def test_a_replicas_app_takes_the_server_tables_hosts() -> None:
    # allowed_hosts was left out on Ray: a proxy's Host, served without Ray, was refused.
    from loadonce.integrations.ray import _app_from_config

    app = _app_from_config(_config(allowed_hosts=["api.example.com"], drain_timeout_s=7.0))
    with TestClient(app):
        assert loadonce.LoadonceState.on(app).allowed_hosts == ("api.example.com",)  # type: ignore[union-attr]
