"""What tracing asks of the core: the span of the request being queued, one span per model
call linked to the requests it carried, and spans around a model's load and reload.

A protocol, like ``observer.py``'s ``ModelObserver``, so the core depends on no tracing
library: ``loadonce.tracing`` implements it with OpenTelemetry, only when tracing is on. The
batcher holds no tracer at all otherwise, and asks nothing per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from loadonce.core.batcher import CallTiming


# The sampled request of the running task (tracing's span of it, opaque here), None when it
# is not sampled: set by tracing while the request runs, read by the batcher as it queues the
# request (a context variable read directly: once per request, not a call of the tracer's),
# and carried to the call that runs it.
TRACED_REQUEST: ContextVar[Any] = ContextVar("loadonce_traced_request", default=None)


class CallTracer(Protocol):
    # A call starts (``started``: time.perf_counter()) with the sampled requests ``carried``:
    # each its span and when it was queued (perf_counter). ``examples``: the call's batch size.
    # Returns what ``call_ended`` is given back.
    def call_started(
        self,
        model: str,
        carried: Sequence[tuple[object, float]],
        examples: int,
        requests: int,
        started: float,
    ) -> object: ...

    # The call returned: ``timing`` (None if it never ran) and the errors it ended with.
    def call_ended(
        self, call: object, timing: CallTiming | None, errors: Sequence[BaseException]
    ) -> None: ...

    # Around a model's load ("load") or reload ("reload").
    def lifecycle(self, model: str, action: str) -> AbstractContextManager[object]: ...
