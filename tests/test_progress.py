"""The status line a terminal shows while models load."""

from __future__ import annotations

import asyncio
import io
import time

import loadonce
from loadonce.server.progress import load_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _slow_loader() -> object:
    time.sleep(0.4)
    return lambda batch: batch


def test_a_terminal_sees_which_model_loads_and_for_how_long() -> None:
    registry = loadonce.Registry([loadonce.ModelSpec(name="slow", loader=_slow_loader)])
    terminal = Terminal()

    async def load() -> None:
        async with load_progress(registry, terminal, interval=0.05):
            await registry.load_all()
        await registry.unload_all()

    asyncio.run(load())
    shown = terminal.getvalue()
    assert "loading 'slow'" in shown
    assert "GiB read, resident" in shown
    assert shown.endswith("\r\x1b[K"), "the line is cleared once loading is done"


def test_a_log_file_gets_no_status_line() -> None:
    registry = loadonce.Registry([loadonce.ModelSpec(name="slow", loader=_slow_loader)])
    log = io.StringIO()

    async def load() -> None:
        async with load_progress(registry, log, interval=0.05):
            await registry.load_all()
        await registry.unload_all()

    asyncio.run(load())
    assert log.getvalue() == ""
