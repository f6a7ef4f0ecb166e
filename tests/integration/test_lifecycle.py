"""Starting, stopping, and an unreachable inference server."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reranker_client import AsyncRerankClient, UnavailableError

from reranker.builder.builder import DEFAULT_MODEL_NAME
from reranker.service.engine import TritonEngine
from reranker.service.server import create_server
from reranker.settings import Settings
from tests.integration.conftest import (
    children,
    cmdline,
    free_port,
    gone,
    start_server,
    stop_server,
)


def test_sigterm_stops_the_service_and_triton_and_cleans_up(
    default_repository: Path, tmp_path: Path
) -> None:
    server = start_server(default_repository, tmp_path, DEFAULT_MODEL_NAME)
    tritons = [p for p in children(server.process.pid) if "tritonserver" in cmdline(p)]
    assert len(tritons) == 1
    assert stop_server(server) == 0
    assert gone(tritons[0])
    prefix = f"reranker{server.process.pid}_"
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(prefix)]
    assert "SERVING on" in server.log.read_text()


def test_interrupt_stops_cleanly(default_repository: Path, tmp_path: Path) -> None:
    server = start_server(default_repository, tmp_path, DEFAULT_MODEL_NAME)
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(30) == 0


async def test_unreachable_triton_is_unavailable_and_the_service_stays_up() -> None:
    settings = Settings(grpc_port=0, http_port=-1, health_interval_s=0.2)
    engine = TritonEngine(
        f"127.0.0.1:{free_port()}",
        settings.max_rows_per_request,
        settings.requests_in_flight_per_model,
    )
    server = await create_server(settings, engine)
    await server.start()
    port = server.grpc_port
    try:
        async with AsyncRerankClient(f"127.0.0.1:{port}", timeout=10) as client:
            for _ in range(2):
                with pytest.raises(UnavailableError) as raised:
                    await client.rank("q", ["a document"])
                assert "unreachable" in raised.value.details
            with pytest.raises(UnavailableError):
                await client.models()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            response = await health.Check(health_pb2.HealthCheckRequest())
            assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(0)
        await engine.close()
