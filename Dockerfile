# loadonce server image: multi-stage, non-root, small.
#   docker build -t loadonce .                                  # scikit-learn and ONNX runtimes
#   docker build -t loadonce --build-arg EXTRAS=sklearn,onnx,torch .   # + CPU PyTorch
# The image serves the config file mounted at /etc/loadonce/loadonce.toml (see
# deploy/kubernetes/); artifacts are expected under /models.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# grpc: the gRPC port the KServe runtime (deploy/kubernetes/kserve-servingruntime.yaml) opens.
ARG EXTRAS=sklearn,onnx,grpc
# CPU-only PyTorch wheels: without this index an EXTRAS with torch pulls the CUDA build (GBs).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY src src
RUN python -m venv /opt/loadonce \
 && /opt/loadonce/bin/pip install --upgrade "pip==26.3" \
 && /opt/loadonce/bin/pip install --extra-index-url "${TORCH_INDEX}" \
      -c requirements/constraints.txt ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
# No compiler, no pip cache, no source tree: the virtual environment only.
COPY --from=build /opt/loadonce /opt/loadonce
RUN useradd --system --uid 10001 --home-dir /home/loadonce --create-home loadonce
USER 10001
ENV PATH=/opt/loadonce/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LOADONCE_CACHE_DIR=/home/loadonce/.cache/loadonce
EXPOSE 8000
# Ready only once every worker loaded every model (the port opens then): /readyz answers 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=300s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"
ENTRYPOINT ["loadonce"]
# Inside a container the server must listen beyond loopback; the port is the EXPOSEd one.
# Give it keys (without them it warns at startup, and anyone who reaches the port can reload):
#   docker run -e LOADONCE_API_KEYS=... -e LOADONCE_ADMIN_API_KEYS=... loadonce
CMD ["serve", "/etc/loadonce/loadonce.toml", "--host", "0.0.0.0", "--port", "8000"]
