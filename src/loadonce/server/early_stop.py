"""Stop signals that arrive before the server's own handlers are in place: a clean stop.

A supervisor (systemd, Kubernetes) sends SIGTERM whenever it likes, a terminal SIGINT. Until
``loadonce serve`` installed its handlers (uvicorn's in a process that serves, the
supervisor's once its socket is bound), Python's own applied: SIGTERM ended the process at
once (status 143, nothing logged, the demo's training child or temporary directories left
behind) and SIGINT raised KeyboardInterrupt wherever it was, a traceback through the imports.

``stop_early_on_signals`` (the command's first line, ``loadonce/__main__.py``) installs
handlers that raise ``StoppedEarly``: a ``BaseException``, which no ``except Exception`` on
the way takes, and which unwinds what runs (``finally`` blocks clean up; a child run through
``subprocess.run`` is killed). ``run_command`` catches it and says one line; the status is
0, as for a stop later on. ``hand_over`` makes them do nothing once the server's own
handlers take over: uvicorn raises a stop signal again at its exit, to reach the handler
that was in place before its own, and that must end nothing then.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StoppedEarly(BaseException):
    """A stop signal arrived before the server's handlers were in place."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name} while starting")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise StoppedEarly(signum)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """What an early handler becomes once the server's own took over."""


def stop_early_on_signals() -> None:
    """From now on, a stop signal raises ``StoppedEarly`` (in the main thread, the only one
    that may set handlers). A signal the process was started ignoring stays ignored (``nohup``,
    a background job's SIGINT)."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _stop)


def hand_over() -> None:
    """The server's own handlers take over from here: the early ones do nothing any more."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is _stop:
            signal.signal(signum, _ignore)


def restore_defaults() -> None:
    """Python's own handlers back, where the early ones are: a command that serves nothing
    (``loadonce reload``, ``plan``) stops on Ctrl-C as any command does."""
    defaults = {signal.SIGINT: signal.default_int_handler}
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) in (_stop, _ignore):
            signal.signal(signum, defaults.get(signum, signal.SIG_DFL))


def say_stopped(stop: StoppedEarly) -> None:
    """The one line of an early stop: through the log once it is configured (its format, JSON
    or plain), else on stderr as the command's other lines."""
    logger = logging.getLogger("loadonce")
    if logger.hasHandlers():
        logger.info("%s; nothing was served", stop)
        logging.shutdown()
    else:
        sys.stderr.write(f"loadonce: {stop}; nothing was served\n")
        sys.stderr.flush()


def run_command(command: Callable[[], object]) -> None:
    """Run the ``loadonce`` command (``command`` imports and calls it), a stop signal from
    the first line on being a clean stop."""
    stop_early_on_signals()
    try:
        command()
    except StoppedEarly as stop:
        hand_over()  # a second signal while it says so changes nothing
        say_stopped(stop)
        _exit_now_if_threads_run(0)
        sys.exit(0)


def _exit_now_if_threads_run(code: int) -> None:
    """A normal exit joins every thread that is not a daemon: one that the user's code
    started on import (a client library's) would keep the stopped process for good. The exit
    handlers still run (temporary directories)."""
    current = threading.current_thread()
    if any(t is not current and t.is_alive() and not t.daemon for t in threading.enumerate()):
        atexit._run_exitfuncs()
        sys.stderr.flush()
        os._exit(code)
