"""HTTP protocols served over the same models: the plain JSON routes, the Open Inference
Protocol (/v2, REST and gRPC) and OpenAI's API (/v1)."""
