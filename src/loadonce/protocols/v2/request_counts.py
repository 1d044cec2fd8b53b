"""How many tensors and parameters one inference request may name, over REST and gRPC.

Each input, requested output and parameter costs Python work per item before any check can
refuse the request (its description built, its shape and datatype checked, its parameters
read): 1 million inputs named in a 14 MiB gRPC message held the event loop 40 seconds, health
probes included, and 30 million shape dimensions in 28 MiB took 570 MB. Counts are checked
first, in constant time each, so a request past them costs nothing more than its bytes.
The bounds are far above what any model takes: a model with more inputs than this takes them
as one tensor.
"""

from __future__ import annotations

from loadonce.core.errors import InvalidRequestError
from loadonce.http.large_bodies import LARGE_BODY_BYTES
from loadonce.protocols.json.count import top_level_elements

# The most input tensors one request may send, and the most outputs it may ask for.
MAX_TENSORS = 1024
# The most entries one parameters map may hold (a request's, or one tensor's).
MAX_PARAMETERS = 64


def check_count(field: str, count: int, most: int) -> None:
    """``field``: where the items are, as the client wrote them (``inputs``,
    ``inputs[2].parameters``)."""
    if count > most:
        raise InvalidRequestError([(field, f"{count} entries; at most {most} are accepted")])


def check_counts_before_parsing(json: bytes) -> None:
    """A large JSON request's ``inputs`` and ``outputs`` counted in its bytes, before pydantic
    builds an object for each: 1 million inputs in 52 MiB held the GIL 5 s in the parse (the
    event loop and health probes with it) only to be refused for their number. The scan
    (``protocols/json/count.py``, the JSON route's) answers only when it is sure; otherwise
    the parse's own limits refuse them."""
    if len(json) < LARGE_BODY_BYTES:
        return
    for field in ("inputs", "outputs"):
        found = top_level_elements(json, field.encode())
        if found is not None:
            check_count(field, found.count, MAX_TENSORS)
