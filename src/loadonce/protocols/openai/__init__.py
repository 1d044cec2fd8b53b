"""OpenAI's API (``/v1``: models, completions, chat completions, embeddings) over the models
that generate or embed text; the ``openai`` client works against it unchanged."""

from loadonce.protocols.openai.routes import openai_router

__all__ = ["openai_router"]
