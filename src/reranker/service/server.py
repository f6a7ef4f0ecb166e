"""The rank service assembled: one core behind its doors (gRPC ``reranker.v1``, ``tei.v1``,
health and reflection on one port; HTTP beside it), and the health monitor they all read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.contract.model import ServedModel
from reranker.service.callers import KeyRing
from reranker.service.core import RankCore
from reranker.service.doors import tei_v1
from reranker.service.doors.grpc_gate import GrpcGate
from reranker.service.doors.reranker_v1 import SERVICE_NAME, RankServicer
from reranker.service.doors.security import grpc_credentials
from reranker.service.engine import TritonEngine
from reranker.service.health import HealthMonitor
from reranker.service.metrics import ServiceMetrics
from reranker.service.tracing import tracer_from
from reranker.settings import Settings

if TYPE_CHECKING:
    from reranker.service.doors.http.server import HttpServer

_HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass
class RankServer:
    """The rank service's front doors over one core, and the health monitor."""

    grpc_server: grpc.aio.Server
    grpc_port: int
    http: HttpServer | None
    monitor: HealthMonitor
    core: RankCore
    # The API keys: ``keys.reload()`` reads the key file again (the launcher's SIGHUP).
    keys: KeyRing
    _sweeping: asyncio.Task[None] | None = None

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def start(self) -> None:
        await self.grpc_server.start()
        if self.http is not None:
            await self.http.start()
        self.monitor.start()
        interval_s = self.core.settings.health_interval_s
        self._sweeping = asyncio.create_task(self.core.catalog.watch(interval_s))

    async def stop(self, grace_s: float) -> None:
        """Refuses new calls and gives those in flight ``grace_s`` to finish."""
        if self._sweeping is not None:
            self._sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping
        await self.monitor.stop()
        stopping = [self.grpc_server.stop(grace_s)]
        if self.http is not None:
            stopping.append(self.http.stop(grace_s))
        await asyncio.gather(*stopping)


async def grpc_health(monitor: HealthMonitor) -> health.aio.HealthServicer:
    """``grpc.health.v1`` for the whole server and for ``reranker.v1.Rank``, following the
    monitor (NOT_SERVING until it has seen the engine work)."""
    servicer = health.aio.HealthServicer()

    async def publish(serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await servicer.set(service, status)

    await publish(monitor.serving.is_set())
    monitor.on_change(publish)
    return servicer


async def create_server(
    settings: Settings,
    engine: TritonEngine,
    on_dead_model: Callable[[ServedModel], Awaitable[None]] | None = None,
    metrics: ServiceMetrics | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    resident_bytes: Callable[[], int] | None = None,
) -> RankServer:
    """Builds the servers (not started) and binds their ports. ``engine`` should trace with
    the same ``tracer_provider`` for Triton's spans to join the calls' traces."""
    # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED, naming both sizes.
    # A response holds at most the request's texts plus a few bytes per result.
    send_limit = settings.max_request_bytes + 64 * settings.max_documents_per_call + (1 << 20)
    metrics = metrics or ServiceMetrics()
    tracer = tracer_from(tracer_provider)
    core = RankCore(settings, engine, metrics, tracer, resident_bytes=resident_bytes)
    monitor = HealthMonitor(engine, settings.health_interval_s, metrics, on_dead_model)
    keys = KeyRing(
        settings.resolved_api_key(),
        Path(settings.api_keys_file) if settings.api_keys_file else None,
    )
    server = grpc.aio.server(
        interceptors=[GrpcGate(metrics, keys, tracer)],
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", send_limit),
        ],
    )
    pb_grpc.add_RankServicer_to_server(RankServicer(core), server)
    tei_names = tei_v1.add_to_server(core, server)
    health_pb2_grpc.add_HealthServicer_to_server(await grpc_health(monitor), server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, *tei_names, _HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.grpc_port}"
    credentials = grpc_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    http = None
    if settings.http_port >= 0:
        # Loaded only where HTTP is served: gRPC alone needs no web stack.
        from reranker.service.doors.http.server import HttpServer

        http = HttpServer(settings, core, metrics, monitor, keys, tracer)
        http.bind()
    return RankServer(server, port, http, monitor, core, keys)
