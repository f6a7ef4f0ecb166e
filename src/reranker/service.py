"""The rank service: the public gRPC API (``reranker.v1.Rank``), TEI's ``tei.v1`` services,
health and reflection on one port, and the HTTP shapes beside them, all over one core."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import trace
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker import tei_service
from reranker.core import ChunkingRequest, RankCall, RankCore, Truncation
from reranker.engine import TritonEngine
from reranker.errors import (
    InvalidArgument,
    ModelRestarting,
    RerankError,
    Unauthenticated,
    grpc_status,
)
from reranker.metrics import ServiceMetrics
from reranker.repository import ModelKind, ServedModel
from reranker.settings import Settings
from reranker.tracing import caller_context, tracer_from

if TYPE_CHECKING:
    from reranker.http_api import HttpServer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Rank"].full_name
KINDS = {
    ModelKind.CROSS_ENCODER: pb.MODEL_KIND_CROSS_ENCODER,
    ModelKind.BI_ENCODER: pb.MODEL_KIND_BI_ENCODER,
    ModelKind.CAUSAL_LM: pb.MODEL_KIND_CAUSAL_LM,
}


_HEALTH_METHODS = "/" + health_pb2.DESCRIPTOR.services_by_name["Health"].full_name + "/"


def _presents_key(metadata: Any, expected: bytes) -> bool:
    for key, value in metadata or ():
        if key == "authorization":
            presented = value if isinstance(value, bytes) else value.encode()
            if hmac.compare_digest(presented, expected):
                return True
    return False


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps the error taxonomy to gRPC status codes (the table in :mod:`reranker.errors`),
    opens each call's server span under the caller's ``traceparent``, checks the API key
    (health checks are exempt, so probes need no secret) and decodes unary requests itself,
    so a malformed message is INVALID_ARGUMENT rather than a bare INTERNAL."""

    def __init__(
        self, metrics: ServiceMetrics, api_key: str = "", tracer: trace.Tracer | None = None
    ) -> None:
        self._metrics = metrics
        self._expected = f"Bearer {api_key}".encode() if api_key else b""
        self._tracer = tracer or trace.NoOpTracer()

    def _authenticate(self, details: grpc.HandlerCallDetails) -> None:
        if not self._expected or details.method.startswith(_HEALTH_METHODS):
            return
        if not _presents_key(details.invocation_metadata, self._expected):
            raise Unauthenticated("missing or invalid API key: send 'authorization: Bearer <key>'")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        try:
            self._authenticate(details)
        except Unauthenticated as error:
            log.info("refused %s: %s", details.method, error)
            self._metrics.calls.labels(details.method, error.status.name).inc()
            return _refusal(handler, error)
        method = details.method
        metadata = details.invocation_metadata or ()
        if handler.unary_unary is not None and handler.request_deserializer is not None:
            decode = handler.request_deserializer
            behavior = handler.unary_unary

            async def decoded(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                try:
                    request = decode(raw)
                except DecodeError:
                    raise InvalidArgument(
                        f"the request is not a valid message for {method} "
                        "(malformed protobuf or a string that is not UTF-8)"
                    ) from None
                return await behavior(request, context)

            return grpc.unary_unary_rpc_method_handler(
                self._guard(method, metadata, decoded),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None and not method.startswith("/grpc.reflection"):
            return grpc.stream_unary_rpc_method_handler(
                self._guard(method, metadata, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _guard(
        self,
        method: str,
        metadata: Any,
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        calls = self._metrics.calls
        tracer = self._tracer

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with tracer.start_as_current_span(
                method.lstrip("/"),
                context=caller_context(metadata),
                kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.method": method},
            ) as span:
                try:
                    response = await behavior(request, context)
                except RerankError as error:
                    status = grpc_status(error)
                    span.set_status(trace.StatusCode.ERROR, status.name)
                    calls.labels(method, status.name).inc()
                    await context.abort(status, str(error))
                except asyncio.CancelledError:
                    calls.labels(method, grpc.StatusCode.CANCELLED.name).inc()
                    raise
                except Exception:
                    if context.code() is not None:  # already aborted by the handler
                        raise
                    log.exception("unexpected error in %s", method)
                    calls.labels(method, grpc.StatusCode.INTERNAL.name).inc()
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            calls.labels(method, grpc.StatusCode.OK.name).inc()
            return response

        return guarded


def _refusal(handler: grpc.RpcMethodHandler, error: RerankError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only aborts with ``error``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc_status(error), str(error))

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


_TRUNCATIONS = {
    pb.TRUNCATION_UNSPECIFIED: Truncation.LONGEST_FIRST,
    pb.TRUNCATION_LONGEST_FIRST: Truncation.LONGEST_FIRST,
    pb.TRUNCATION_REFUSE: Truncation.REFUSE,
}


def rank_call(request: pb.RankRequest) -> RankCall:
    """The core's call for a ``reranker.v1`` request."""
    truncation = _TRUNCATIONS.get(request.truncation)
    if truncation is None:
        raise InvalidArgument(f"truncation has no value {request.truncation}")
    chunking = None
    if request.chunking.enabled:
        chunking = ChunkingRequest(
            overlap_tokens=request.chunking.overlap_tokens
            if request.chunking.HasField("overlap_tokens")
            else None,
            max_chunks=request.chunking.max_chunks,
        )
    return RankCall(
        query=request.query,
        documents=list(request.documents),
        model=request.model,
        top_k=request.top_k if request.HasField("top_k") else None,
        return_documents=request.return_documents,
        raw_scores=request.raw_scores,
        truncation=truncation,
        max_document_tokens=request.max_document_tokens,
        chunking=chunking,
        instruction=request.instruction if request.HasField("instruction") else None,
    )


class RankServicer(pb_grpc.RankServicer):
    """``reranker.v1.Rank``: converts shapes; the core does the work."""

    def __init__(self, core: RankCore) -> None:
        self._core = core

    async def Rank(
        self, request: pb.RankRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankResponse:
        call = rank_call(request)
        outcome = await self._core.rank(call, self._core.timeout(context.time_remaining()))
        return pb.RankResponse(
            results=[
                pb.RankResult(index=r.index, score=r.score, text=r.text) for r in outcome.results
            ],
            model=outcome.model.name,
            metadata=pb.RankMetadata(
                pairs=outcome.pairs,
                inference_requests=outcome.inference_requests,
                inference_time_us=int(outcome.inference_time_s * 1e6),
                total_time_us=int(outcome.total_time_s * 1e6),
            ),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        listing = await self._core.list_models()
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=m.name,
                    kind=KINDS[m.kind],
                    max_length=m.max_length,
                    is_default=m.name == listing.default,
                    architecture=m.architecture,
                    precision=m.precision,
                    family=m.family,
                    scoring=m.scoring,
                    takes_instruction=m.takes_instruction,
                    runtime=m.runtime.value,
                )
                for m in listing.models
            ]
        )


class HealthMonitor:
    """Keeps ``grpc.health.v1`` in step with the engine: SERVING only while every served
    model answers, live calls or, for a model that had none within the interval, a canary
    request (Triton's own readiness flag can lie after a stub dies).
    Checks run every ``interval_s``, and at once when a call meets a failing backend.

    Triton does not restart a Python-backend stub process that died, and unloading such a
    model hangs once a request has reached it; so a model found dead is reported to
    ``on_dead_model`` (the launcher restarts Triton), and the service heals by itself.
    """

    def __init__(
        self,
        health_servicer: health.aio.HealthServicer,
        engine: TritonEngine,
        interval_s: float,
        metrics: ServiceMetrics,
        on_dead_model: Callable[[ServedModel], Awaitable[None]] | None = None,
    ) -> None:
        self._health = health_servicer
        self._metrics = metrics
        self._engine = engine
        self._interval_s = interval_s
        self._on_dead_model = on_dead_model
        self._task: asyncio.Task[None] | None = None
        self._restarted_at = -math.inf
        self.serving = asyncio.Event()

    async def check(self) -> bool:
        try:
            models = await self._engine.refresh()
            for model in models.values():
                if not await self._alive(model):
                    if self._on_dead_model is not None:
                        self._restarted_at = time.monotonic()
                        await self._on_dead_model(model)
                    return False
        except RerankError as error:
            log.warning("engine not ready: %s", error)
            return False
        return bool(models)

    async def _alive(self, model: ServedModel) -> bool:
        # A call that found the process dead since the last restart is proof enough: a canary
        # would take Triton another second to fail. Only the launcher's own Triton is
        # restarted on that word; any other is probed until it answers again.
        health = self._engine.health
        if self._on_dead_model is not None and health.found_dead_after(
            model.name, self._restarted_at
        ):
            log.error("a call found the process of model %s dead", model.name)
            return False
        if health.answered_within(model.name, self._interval_s):
            return True
        try:
            await self._engine.score(model, "canary", ["canary"], timeout_s=10.0)
        except ModelRestarting as error:
            log.error("model %s failed its canary: %s", model.name, error)
            return False
        return True

    async def _set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
        self._metrics.serving.set(1 if serving else 0)
        if serving:
            self.serving.set()
        else:
            self.serving.clear()

    async def _run(self) -> None:
        while True:
            await self._set(await self.check())
            await self._engine.health.wait_for_trouble(self._interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._set(False)


@dataclass
class RankServer:
    """The rank service's front doors over one core: gRPC (``reranker.v1``, ``tei.v1``,
    health, reflection) and, unless turned off, HTTP; and the health monitor."""

    grpc_server: grpc.aio.Server
    grpc_port: int
    http: HttpServer | None
    monitor: HealthMonitor
    core: RankCore

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def start(self) -> None:
        await self.grpc_server.start()
        if self.http is not None:
            await self.http.start()
        self.monitor.start()

    async def stop(self, grace_s: float) -> None:
        """Refuses new calls and gives those in flight ``grace_s`` to finish."""
        await self.monitor.stop()
        stopping = [self.grpc_server.stop(grace_s)]
        if self.http is not None:
            stopping.append(self.http.stop(grace_s))
        await asyncio.gather(*stopping)


async def create_server(
    settings: Settings,
    engine: TritonEngine,
    on_dead_model: Callable[[ServedModel], Awaitable[None]] | None = None,
    metrics: ServiceMetrics | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> RankServer:
    """Builds the servers (not started) and binds their ports. Health reports NOT_SERVING
    until the monitor has seen the engine work. ``engine`` should trace with the same
    ``tracer_provider`` for Triton's spans to join the calls' traces."""
    # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED, naming both sizes.
    # A response holds at most the request's texts plus a few bytes per result.
    send_limit = settings.max_request_bytes + 64 * settings.max_documents_per_call + (1 << 20)
    metrics = metrics or ServiceMetrics()
    tracer = tracer_from(tracer_provider)
    core = RankCore(settings, engine, metrics, tracer)
    api_key = settings.resolved_api_key()
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(metrics, api_key, tracer)],
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", send_limit),
        ],
    )
    pb_grpc.add_RankServicer_to_server(RankServicer(core), server)
    tei_names = tei_service.add_to_server(core, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            *tei_names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{settings.host}:{settings.grpc_port}"
    credentials = server_credentials(settings)
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot bind {address}")
    monitor = HealthMonitor(
        health_servicer, engine, settings.health_interval_s, metrics, on_dead_model
    )
    http = None
    if settings.http_port >= 0:
        # Loaded only where HTTP is served: gRPC alone needs no web stack.
        from reranker.http_api import HttpServer

        http = HttpServer(settings, core, metrics, monitor.serving, api_key, tracer)
        http.bind()
    return RankServer(server, port, http, monitor, core)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS credentials from the settings' PEM files (None: plaintext)."""
    if not settings.tls_cert_file:
        return None
    chain = Path(settings.tls_cert_file).read_bytes()
    key = Path(settings.tls_key_file).read_bytes()
    client_ca = (
        Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    )
    return grpc.ssl_server_credentials(
        [(key, chain)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )
