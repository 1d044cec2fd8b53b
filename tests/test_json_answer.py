"""Answers written by loadonce's one shared JSON encoder are byte for byte what Starlette's
``JSONResponse`` writes, for every kind of value an answer holds, and refuse what it refuses
(NaN and infinities are not JSON)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from starlette.responses import JSONResponse

from loadonce.http.json_answer import JSONAnswer, json_text

VALUES: list[Any] = [
    {"model": "m", "version": "1", "outputs": [1, 2.5, -0.0, 1e-300, 1.7976931348623157e308]},
    {"text": "naïve café ✓ 中文 \U0001f600", "quote": '"\\\n\t\u0000\u2028'},
    [None, True, False, 2**70, -(2**63), 0.1 + 0.2],
    {"nested": {"a": [[], {}, [{"b": None}]]}, "empty": ""},
    "a bare string",
    [],
]


@pytest.mark.parametrize("value", VALUES)
def test_the_body_is_starlettes(value: Any) -> None:
    ours = JSONAnswer(value, status_code=201, headers={"X-Request-ID": "r"})
    theirs = JSONResponse(value, status_code=201, headers={"X-Request-ID": "r"})
    assert ours.body == theirs.body
    assert ours.raw_headers == theirs.raw_headers
    assert json_text(value).encode("utf-8") == theirs.body


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_what_is_not_json_is_refused_as_starlette_refuses_it(number: float) -> None:
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        JSONResponse({"outputs": [number]})
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        JSONAnswer({"outputs": [number]})
