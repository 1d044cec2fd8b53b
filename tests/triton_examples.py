"""Run Triton's published tritonclient HTTP example programs against a fresh loadonce server.

    python -m tests.triton_examples DIRECTORY

DIRECTORY holds the programs as NVIDIA publishes them (``src/python/examples`` of
triton-inference-server/client, BSD-3); they are not in this repository, which commits no code
fetched from elsewhere. Each runs unchanged but for its one check of Triton's identity (the
server's name), against the models it expects (``tests/v2_models.py``). Exit status: the
number of programs that failed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import loadonce
from tests.servers import ThreadedServer
from tests.v2_models import triton_example_specs

PROGRAMS = (
    "simple_http_health_metadata.py",
    "simple_http_infer_client.py",
    "simple_http_aio_infer_client.py",
    "simple_http_string_infer_client.py",
    "simple_http_model_control.py",
)


def run(directory: Path, program: str) -> bool:
    source = (directory / program).read_text()
    with tempfile.TemporaryDirectory() as scratch:
        adapted = Path(scratch) / program
        # The one check of Triton's identity: which server answers.
        adapted.write_text(
            source.replace('metadata["name"] == "triton"', 'metadata["name"] == "loadonce"')
        )
        with ThreadedServer(loadonce.create_app(triton_example_specs())) as running:
            ran = subprocess.run(
                [sys.executable, str(adapted), "-u", running.url.removeprefix("http://")],
                capture_output=True,
                text=True,
                timeout=60,
            )
    print(f"{program}: {'ok' if ran.returncode == 0 else 'FAILED'}")
    if ran.returncode != 0:
        print(ran.stdout[-2000:] + ran.stderr[-2000:])
    return ran.returncode == 0


def main() -> int:
    [directory] = sys.argv[1:]
    return sum(not run(Path(directory), program) for program in PROGRAMS)


if __name__ == "__main__":
    sys.exit(main())
