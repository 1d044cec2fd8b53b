"""The bytes of request bodies one worker holds at once (``Limits.max_body_bytes_in_flight``).

``max_body_bytes`` bounds one body, ``max_connections`` the requests: together they let a
worker hold 1,000 bodies of 64 MiB, 64 GiB, before any of them is refused; and a gzip body of
64 KiB inflates to 64 MiB. Every request's body is counted here as it arrives (and again as
it is decompressed), and given back when its request ends; a request whose next bytes would
pass the limit while others hold bytes is refused (503 with Retry-After, gRPC UNAVAILABLE),
and gives its bytes back with its answer. Bytes are counted as they arrive, not as declared:
a client that declares a large body and sends it slowly holds only what it sent.

Used on the worker's event loop only (HTTP's middleware and routes, gRPC's handlers): no lock.
"""

from __future__ import annotations

import sys

from loadonce.core.errors import BodiesInFlightError


class BodyBudget:
    """The worker's count of body bytes held (``held``), within ``most`` (the limit; None
    given: counted, no limit). Read and written directly by ``http/body_limit.py``'s counting
    ``receive``, a call each request's body makes: a method call per chunk cost more than
    the count."""

    __slots__ = ("held", "most")

    def __init__(self, limit: int | None) -> None:
        self.most = sys.maxsize if limit is None else limit
        self.held = 0

    def refusal(self) -> BodiesInFlightError:
        return BodiesInFlightError(self.most)


class HeldBody:
    """What one request holds of the budget: ``take`` as its bytes arrive, ``release`` once
    when it ends."""

    __slots__ = ("budget", "held")

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        """Count ``size`` more bytes; ``BodiesInFlightError`` if they would pass the limit
        while other requests hold bytes (a request alone is never refused here: its body is
        bounded by ``max_body_bytes``)."""
        budget = self.budget
        total = budget.held + size
        if total > budget.most and budget.held > self.held:
            raise budget.refusal()
        budget.held = total
        self.held += size

    def release(self) -> None:
        self.budget.held -= self.held
        self.held = 0
