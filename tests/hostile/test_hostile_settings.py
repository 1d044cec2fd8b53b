"""Every setting, from the config file, the command line or a LOADONCE_* variable, refuses a
hostile value at startup with one line naming it and status 2: never a traceback, never a
server that runs on an absurd value (a thread's wait on 1e300 s raised OverflowError; a pool of
a hundred million copies began loading; LOADONCE_API_KEY, a typo, served with no key)."""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import loadonce
from loadonce.server.settings import RayOptions, ServerOptions
from loadonce.tracing import TracingOptions
from tests.servers import run_cli

_MODELS: list[type[BaseModel]] = [
    ServerOptions,
    RayOptions,
    TracingOptions,
    loadonce.ModelSpec,
    loadonce.Batching,
]


def _valid(model: type[BaseModel]) -> dict[str, Any]:
    return {"name": "m", "loader": "a:b"} if model is loadonce.ModelSpec else {}


def _kinds(annotation: Any) -> set[type]:
    """The plain types a field takes (int, float, bool, str, Path), unions and Annotated read
    through; containers and Any left out."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, typing.get_origin(int | None)):
        return set().union(*(_kinds(member) for member in typing.get_args(annotation)))
    if isinstance(annotation, type) and issubclass(annotation, bool | int | float | str | Path):
        return {annotation}
    return set()


def _fields(*kinds: type, only: bool = False) -> list[Any]:
    """The settings that take any of ``kinds``; ``only``: and nothing else."""
    return [
        pytest.param(model, name, id=f"{model.__name__}.{name}")
        for model in _MODELS
        for name, field in model.model_fields.items()
        if _kinds(field.annotation) & set(kinds)
        and not (only and _kinds(field.annotation) - set(kinds))
    ]


def _numbers_not_switches() -> list[Any]:
    """The settings that take a number and not true or false (one taking both reads a big
    number as a number, not as a switch)."""
    return [
        param
        for param in _fields(int, float)
        if bool not in _kinds(param.values[0].model_fields[param.values[1]].annotation)
    ]


def _refused(model: type[BaseModel], name: str, value: Any) -> str:
    with pytest.raises(ValidationError) as refused:
        model.model_validate({**_valid(model), name: value})
    return str(refused.value)


@pytest.mark.parametrize(("model", "name"), _fields(float))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", 1e300])
def test_every_number_setting_refuses_what_is_no_finite_sensible_number(
    model: type[BaseModel], name: str, value: Any
) -> None:
    _refused(model, name, value)


@pytest.mark.parametrize(("model", "name"), _numbers_not_switches())
def test_every_number_setting_refuses_a_number_past_64_bits(
    model: type[BaseModel], name: str
) -> None:
    _refused(model, name, "1" + "0" * 30)  # as a variable gives it


@pytest.mark.parametrize(("model", "name"), _fields(bool, only=True))
def test_every_switch_refuses_a_number(model: type[BaseModel], name: str) -> None:
    assert "must be true or false" in _refused(model, name, 0)


@pytest.mark.parametrize(("model", "name"), _fields(str, Path))
@pytest.mark.parametrize("value", ["", "   "])
def test_every_text_setting_refuses_an_empty_one(
    model: type[BaseModel], name: str, value: str
) -> None:
    _refused(model, name, value)


def _serve(tmp_path: Path, server: str = "", model: str = "", **env: str) -> tuple[int, str]:
    config = tmp_path / "loadonce.toml"
    config.write_text(
        f'[server]\n{server}\n[[models]]\nname = "echo"\nloader = "tests.loaders:echo"\n{model}\n'
    )
    done = run_cli(tmp_path, "serve", str(config), env=env, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("server", "model", "env", "said"),
    [
        ("startup_timeout_s = 1e300", "", {}, "startup_timeout_s: Input should be less than"),
        ("gc_freeze = 0", "", {}, "gc_freeze: must be true or false, not 0"),
        ("memory_limit = 0", "", {}, "memory_limit: Input should be greater than 0"),
        ("", 'concurrency = "pool:100000000"', {}, "concurrency size must be from 1 to 1024"),
        ("", 'artifact = ""', {}, "artifact: must not be empty"),
        ("", "input_shape = [9223372036854775807]", {}, "(at most 2147483647)"),
        ("", "", {"LOADONCE_MAX_CONNECTIONS": "1" + "0" * 30}, "LOADONCE_MAX_CONNECTIONS"),
        ("", "", {"LOADONCE_WORKERS": ""}, "LOADONCE_WORKERS is set but holds no value"),
        ("", "", {"LOADONCE_API_KEY": "k" * 20}, "(did you mean LOADONCE_API_KEYS?)"),
        ("port = 1\nport = 2", "", {}, "cannot read config file"),  # a duplicate key
    ],
)
def test_a_hostile_setting_stops_startup_with_one_line(
    tmp_path: Path, server: str, model: str, env: dict[str, str], said: str
) -> None:
    status, output = _serve(tmp_path, server, model, **env)
    assert status == 2, output
    assert said in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
