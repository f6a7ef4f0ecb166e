# The rank service (and the repository builder) for GPU deployments; it runs beside Triton
# and reaches it on loopback. Build from the repository root:
#   docker build -f docker/rank-service.Dockerfile -t reranker .
FROM python:3.11-slim-bookworm

WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1

# torch and torchvision (CPU builds: only the builder loads checkpoints with them) first and
# on their own, as in the Makefile, so nothing pulls a CUDA build; then the pinned
# requirements.
COPY requirements.txt ./
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r requirements.txt

COPY pyproject.toml ./
COPY src src
COPY api api
COPY client client
COPY server_config server_config
RUN pip install --no-deps ./api . ./client

RUN groupadd --gid 10001 reranker && useradd --create-home --uid 10001 --gid 10001 reranker
USER reranker
EXPOSE 50051 8080 8003
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD python -m reranker health --address 127.0.0.1:50051
ENTRYPOINT ["python", "-m", "reranker"]
CMD ["serve", "--profile", "server_config/gpu.toml"]
