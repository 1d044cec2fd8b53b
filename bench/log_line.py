"""What one request log line costs in-process, with server mode's logging (``log_config``):
50,000 lines through ``write_request_line``, the way the request log writes them, to a file
(standard error redirected to bench/results/log_line.log), plain and JSON; each handed to the
handler as data, and each as a record (a filter on ``loadonce.access``, which does nothing,
makes every line take the record's way). The time includes the flushes' formatting and writes.

    python -m bench.log_line [--lines 50000]
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
import time

from bench.servers import RESULTS
from loadonce.http.request_line import access_logger, write_request_line
from loadonce.server.log_format import log_config


def _passes(record: logging.LogRecord) -> bool:
    return True


def _microseconds_per_line(lines: int) -> float:
    started = time.perf_counter()
    for _ in range(lines):
        write_request_line("POST", "/models/iris/predict", 200, 0.4321, "0" * 32)
    logging.getLogger("loadonce").handlers[0].flush()
    return (time.perf_counter() - started) / lines * 1e6


def measure(log_format: str, lines: int) -> dict[str, float]:
    logging.config.dictConfig(log_config("info", log_format))
    figures = {"as data": _microseconds_per_line(lines)}
    access_logger.addFilter(_passes)
    figures["as a record"] = _microseconds_per_line(lines)
    access_logger.removeFilter(_passes)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=50_000)
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    with (RESULTS / "log_line.log").open("w") as sink:
        os.dup2(sink.fileno(), sys.stderr.fileno())  # before the handler dups standard error
    print("| format | as data µs a line | as a record µs a line |", file=report)
    print("| --- | ---: | ---: |", file=report)
    for log_format in ("plain", "json"):
        figures = measure(log_format, args.lines)
        print(
            f"| {log_format} | {figures['as data']:.1f} | {figures['as a record']:.1f} |",
            file=report,
            flush=True,
        )


if __name__ == "__main__":
    main()
