"""Running wrk (Debian's package) with bench/post.lua, and reading what it prints."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

POST_SCRIPT = Path(__file__).resolve().parent / "post.lua"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class WrkResult:
    req_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int  # non-2xx answers, plus connect/read/write/timeout errors
    socket_errors: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ms(text: str | None) -> float | None:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text or "")
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def parse(output: str) -> WrkResult:
    """wrk's req/s, p50, p99 (from --latency) and error counts; raises on anything else."""
    requests_per_s = re.search(r"^Requests/sec:\s+([\d.]+)\s*$", output, re.MULTILINE)
    if requests_per_s is None:
        raise ValueError(f"not wrk --latency output:\n{output}")
    percentiles = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)\s*$", output, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_line = re.search(r"Socket errors: (.*)$", output, re.MULTILINE)
    socket_errors = 0
    if socket_line:
        socket_errors = sum(int(n) for n in re.findall(r"\w+ (\d+)", socket_line.group(1)))
    return WrkResult(
        req_per_s=float(requests_per_s.group(1)),
        p50_ms=_ms(percentiles.get("50")),
        p99_ms=_ms(percentiles.get("99")),
        errors=(int(non_2xx.group(1)) if non_2xx else 0) + socket_errors,
        socket_errors=socket_line.group(1).strip() if socket_line else "none",
    )


def run(
    url: str,
    body: str,
    *,
    connections: int,
    seconds: float,
    core: str | None = None,
    env: dict[str, str] | None = None,
) -> WrkResult:
    """One wrk run POSTing ``body``; ``core`` pins wrk with taskset; ``env`` sets post.lua's
    other BENCH_ variables (content type, a body file, a header length)."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
        "-s", str(POST_SCRIPT), url,
    ]  # fmt: skip
    if core is not None:
        command = ["taskset", "-c", core, *command]
    output = subprocess.run(
        command,
        env={**os.environ, "BENCH_BODY": body, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse(output)
