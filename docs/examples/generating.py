"""A predictor of your own that generates text, served by the generate routes."""

from collections.abc import Iterator, Sequence
from typing import Any

import loadonce
from loadonce import GenerationRequest


class Shouter(loadonce.Predictor):
    # The most new tokens one request may ask for: more is a 400, never hours of work.
    max_new_tokens = 64

    def predict(self, batch: Any) -> Sequence[Any]:
        return [text.upper() for text in batch]

    def generate(self, request: GenerationRequest) -> Iterator[str]:
        # Yield the text a piece (a token) at a time: each piece streams to the client as it
        # is yielded. loadonce applies request.stop, max_new_tokens and the deadline, and
        # closes this generator early when the client goes away.
        for word in (request.prompt or "").split():
            yield word.upper() + " "


app = loadonce.create_app([loadonce.ModelSpec(name="shouter", loader=Shouter)])
