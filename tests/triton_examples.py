"""Run Triton's published tritonclient example programs, HTTP and gRPC, against a fresh loadonce
server each.

    python -m tests.triton_examples DIRECTORY

DIRECTORY holds the programs as NVIDIA publishes them (``src/python/examples`` of
triton-inference-server/client, BSD-3); they are not in this repository, which commits no code
fetched from elsewhere. Each runs as published, with ``-u`` pointing at the server (its HTTP
port, or its gRPC port: ``grpc_lifespan`` on a free one), against the models it expects
(``tests/v2_models.py``), but for the few checks of Triton itself listed with it below. A
listed check that is no longer in the program fails the run, so a changed program is seen.
Exit status: the number of programs that failed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import loadonce
from loadonce.protocols.grpc import grpc_lifespan
from tests.servers import ThreadedServer, free_port
from tests.v2_models import triton_example_specs

# Which server answers: Triton's name, as each client reads the server's metadata.
_HTTP_NAME = ('metadata["name"] == "triton"', 'metadata["name"] == "loadonce"')
_GRPC_NAME = ('metadata.name == "triton"', 'metadata.name == "loadonce"')
# Triton answers a load with an unusable ``file:`` parameter with INTERNAL and "failed to poll
# from model repository", which its own program marks as a known fault ("TODO: [TRI-958]
# StatusCode.INVALID_ARGUMENT is more appropriate"). loadonce answers a client's mistake
# INVALID_ARGUMENT, with Triton's "failed to load", as for every refused load.
_FILE_LOAD = (
    ('e.status() != "StatusCode.INTERNAL"', 'e.status() != "StatusCode.INVALID_ARGUMENT"'),
    (
        '"failed to poll from model repository" not in e.message()',
        '"failed to load" not in e.message()',
    ),
)


@dataclass(frozen=True)
class Program:
    name: str
    grpc: bool = False
    # (as published, as run): the checks of Triton itself.
    adapted: tuple[tuple[str, str], ...] = ()
    # The model-control programs count the models of the repository.
    models: int = 7


PROGRAMS = (
    Program("simple_http_health_metadata.py", adapted=(_HTTP_NAME,)),
    Program("simple_http_infer_client.py"),
    Program("simple_http_aio_infer_client.py"),
    Program("simple_http_string_infer_client.py"),
    Program("simple_http_model_control.py"),
    Program("simple_grpc_health_metadata.py", grpc=True, adapted=(_GRPC_NAME,)),
    Program("simple_grpc_infer_client.py", grpc=True),
    Program("simple_grpc_aio_infer_client.py", grpc=True),
    Program("simple_grpc_async_infer_client.py", grpc=True),
    Program("simple_grpc_string_infer_client.py", grpc=True),
    Program("simple_grpc_model_control.py", grpc=True, adapted=_FILE_LOAD, models=8),
)


def run(directory: Path, program: Program) -> bool:
    source = (directory / program.name).read_text()
    for published, replacement in program.adapted:
        if published not in source:
            print(f"{program.name}: FAILED (it no longer says {published!r}: see what changed)")
            return False
        source = source.replace(published, replacement)
    port = free_port()
    wrap = grpc_lifespan(port=port) if program.grpc else None
    app = loadonce.create_app(triton_example_specs(program.models), wrap=wrap)
    with tempfile.TemporaryDirectory() as scratch, ThreadedServer(app) as running:
        adapted = Path(scratch) / program.name
        adapted.write_text(source)
        url = f"127.0.0.1:{port}" if program.grpc else running.url.removeprefix("http://")
        ran = subprocess.run(
            [sys.executable, str(adapted), "-u", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    print(f"{program.name}: {'ok' if ran.returncode == 0 else 'FAILED'}")
    if ran.returncode != 0:
        print(ran.stdout[-2000:] + ran.stderr[-2000:])
    return ran.returncode == 0


def main() -> int:
    [directory] = sys.argv[1:]
    return sum(not run(Path(directory), program) for program in PROGRAMS)


if __name__ == "__main__":
    sys.exit(main())
