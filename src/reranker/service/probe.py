"""``reranker health``: a gRPC health check of a running rank service, for container health
checks (exit 0 when it reports SERVING)."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def probe_health(address: str, timeout_s: float, tls_ca_file: str | None) -> int:
    """Asks the rank service at ``address`` whether it serves; prints what it says; the exit
    status: 0 when SERVING, else 1."""
    channel = (
        grpc.secure_channel(address, grpc.ssl_channel_credentials(Path(tls_ca_file).read_bytes()))
        if tls_ca_file
        else grpc.insecure_channel(address)
    )
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError as error:
            print(f"{address}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(f"{address}: {status}")
    return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1
