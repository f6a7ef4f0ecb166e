# Triton Inference Server for GPU deployments: the official container of release 24.10, which
# is Triton 2.51.0, the same release as the tritonserver binary the CPU path runs from the
# nvidia-pytriton wheel. Added: Python 3.11 with what the tokenizer model imports, and the
# Python-backend stub built for Python 3.11 (taken from that wheel, same release).
# Build from the repository root: docker build -f docker/triton.Dockerfile -t reranker-triton .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 curl \
      patchelf \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/reranker

# Versions come from requirements.txt, the one list the CPU path and the tests use too. The
# stub links the CUDA runtime the wheel bundles under a renamed file; the script copies it
# beside the stub before the wheel goes (tests/unit/test_deploy.py runs the same script).
COPY requirements.txt /tmp/requirements.txt
COPY docker/install-python-stub.sh /tmp/install-python-stub.sh
RUN /opt/reranker/bin/pip install --no-cache-dir \
      $(grep -E '^(numpy|tokenizers)==' /tmp/requirements.txt) \
 && /opt/reranker/bin/pip install --no-cache-dir --no-deps \
      $(grep -E '^nvidia-pytriton==' /tmp/requirements.txt) \
 && /tmp/install-python-stub.sh /opt/reranker/lib/python3.11/site-packages \
      /opt/tritonserver/backends/python \
 && /opt/reranker/bin/pip uninstall -y nvidia-pytriton

COPY pyproject.toml /src/pyproject.toml
COPY src /src/src
RUN /opt/reranker/bin/pip install --no-cache-dir --no-deps /src

# The stub finds this environment through PATH.
ENV PATH=/opt/reranker/bin:${PATH}

# HTTP and gRPC stay on loopback: only the rank service beside Triton (same pod or network
# namespace) reaches them, so the model-control and shared-memory APIs are never exposed.
# Metrics are read-only and scraped from outside.
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/v2/health/ready || exit 1
ENTRYPOINT ["tritonserver", \
  "--model-repository=/models", \
  "--model-control-mode=explicit", "--load-model=*", \
  "--disable-auto-complete-config", \
  "--strict-readiness=true", \
  "--exit-timeout-secs=30", \
  "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", \
  "--metrics-address=0.0.0.0", "--allow-metrics=true", "--allow-gpu-metrics=true"]
