"""The Open Inference Protocol (KServe V2) over REST, with the binary tensor data extension
and the model repository extension; Triton's and KServe's clients work against it unchanged."""

from loadonce.protocols.v2.routes import v2_router

__all__ = ["v2_router"]
