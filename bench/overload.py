"""An open-loop load generator: requests leave on a fixed schedule, whatever the answers.

wrk keeps a fixed number of connections busy (a closed loop), so a server that slows down
is offered less. Here request i is due at start + i / rate and leaves on the first idle one of
a fixed set of connections; its latency counts from when it was due, so waiting for a
connection in the generator is not hidden.

`python -m bench.overload HOST PORT RATE SECONDS BODY_JSON` prints a JSON summary.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import Any

import numpy as np
import uvloop


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("closed")
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _send(
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    due: float,
    request: bytes,
    address: tuple[str, int],
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    results: list[tuple[int, float, float]],
) -> None:
    reader, writer = connection
    loop = asyncio.get_running_loop()
    sent = loop.time()
    try:
        writer.write(request)
        status = await _read_response(reader)
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        status = 0
        writer.close()
        connection = await asyncio.open_connection(*address)
    now = loop.time()
    results.append((status, now - due, now - sent))
    idle.put_nowait(connection)


async def run(
    host: str, port: int, rate: float, seconds: float, body: str, connections: int = 512
) -> dict[str, Any]:
    request = (
        f"POST /models/m/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))
    results: list[tuple[int, float, float]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending: set[asyncio.Task[None]] = set()
    total = int(rate * seconds)
    for sequence in range(total):
        due = start + sequence / rate
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        # When every connection is busy the request waits here, and that wait is part of its
        # latency (counted from when it was due), as it would be for a real client.
        connection = await idle.get()
        task = loop.create_task(_send(connection, due, request, (host, port), idle, results))
        pending.add(task)
        task.add_done_callback(pending.discard)
    sending_took = loop.time() - start
    await asyncio.gather(*pending)
    # Longer than ``seconds`` when the server fell behind and requests waited for a connection.
    took = loop.time() - start
    statuses = Counter(status for status, _, _ in results)
    ok = np.asarray([latency for status, latency, _ in results if status == 200])
    ok_served = np.asarray([served for status, _, served in results if status == 200])
    return {
        "offered_rate": rate,
        "achieved_offered_rate": total / sending_took,
        "connections": connections,
        "sent": len(results),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds_taken": took,
        "ok_per_s": len(ok) / took,
        "ok_p50_ms": float(np.percentile(ok, 50) * 1000) if len(ok) else None,
        "ok_p99_ms": float(np.percentile(ok, 99) * 1000) if len(ok) else None,
        # From when the request was written to the socket: the server's own share.
        "ok_p50_from_send_ms": float(np.percentile(ok_served, 50) * 1000) if len(ok) else None,
        "ok_p99_from_send_ms": float(np.percentile(ok_served, 99) * 1000) if len(ok) else None,
    }


def main() -> None:
    host, port, rate, seconds, body = sys.argv[1:6]
    summary = uvloop.run(run(host, int(port), float(rate), float(seconds), body))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
