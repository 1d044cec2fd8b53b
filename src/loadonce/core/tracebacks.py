"""Letting go of an answered request's exception tracebacks, so its memory goes back at once.

An exception that reached a request through a future (a model's, raised in a worker thread;
a body parsed in a thread) keeps, through its traceback, every frame it left, and some of
those frames hold the future, or the batch's outcomes, that hold the exception: a reference
cycle. Only the garbage collector frees a cycle, and with it every frame's locals: the
request's parsed body, and the whole batch's inputs. Its objects had often moved to an older
generation by then, which is collected rarely: a hundred refused 2.4 MiB bodies kept a worker
hundreds of MiB larger (30 MiB bodies: more than a GiB).

Once the error is answered, logged and recorded on its span, its tracebacks have been used:
``release_tracebacks`` drops them (the exception's, its cause's and its context's), which
breaks every such cycle, and the frames and their locals are freed by reference counting.
The frames themselves are left as they are (``frame.clear()`` would close a suspended
generator's).
"""

from __future__ import annotations


def release_tracebacks(error: BaseException) -> None:
    """Drop the tracebacks of ``error`` and of every exception chained to it."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending.extend(
            chained for chained in (current.__cause__, current.__context__) if chained is not None
        )
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
