"""The status line a terminal shows while models load."""

from __future__ import annotations

import asyncio
import io
import logging
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


def test_a_log_line_never_shares_the_status_line() -> None:
    """Loading logs while the status line is shown: each log line first erases it."""
    registry = loadonce.Registry([loadonce.ModelSpec(name="slow", loader=_slow_loader)])
    terminal = Terminal()
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    logger = logging.getLogger("loadonce")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel: it clears the logger's cached answers

    async def load() -> None:
        async with load_progress(registry, terminal, interval=0.05):
            await asyncio.sleep(0.2)  # the status line is drawn
            await registry.load_all()  # logs while it is shown
        await registry.unload_all()

    try:
        asyncio.run(load())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    shown = terminal.getvalue()
    assert "GiB read, resident" in shown
    assert shown.count("LOG ") >= 2
    assert shown.count("LOG ") == shown.count("\r\x1b[KLOG ")
