"""The rank service: the public gRPC API (``reranker.v1.Rank``), health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from reranker_client._proto.reranker.v1 import reranker_pb2 as pb
from reranker_client._proto.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.chunking import DocumentChunker, best_per_document
from reranker.engine import TritonEngine
from reranker.errors import (
    InvalidArgument,
    ModelRestarting,
    RerankError,
    Unauthenticated,
    Unavailable,
)
from reranker.limits import CallLimits, RowBudget
from reranker.metrics import ServiceMetrics
from reranker.ranking import (
    ChunkingChoice,
    activate,
    assemble,
    resolve_options,
    validate_rank_request,
)
from reranker.repository import ModelKind, ServedModel
from reranker.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Rank"].full_name
_KINDS = {
    ModelKind.CROSS_ENCODER: pb.MODEL_KIND_CROSS_ENCODER,
    ModelKind.BI_ENCODER: pb.MODEL_KIND_BI_ENCODER,
}


_HEALTH_METHODS = "/" + health_pb2.DESCRIPTOR.services_by_name["Health"].full_name + "/"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps the error taxonomy to gRPC status codes: the one place that does. It also checks
    the API key (health checks are exempt, so probes need no secret) and decodes requests
    itself, so a malformed message is INVALID_ARGUMENT rather than a bare INTERNAL."""

    def __init__(self, metrics: ServiceMetrics, api_key: str = "") -> None:
        self._metrics = metrics
        self._expected = f"Bearer {api_key}".encode() if api_key else b""

    def _authenticate(self, details: grpc.HandlerCallDetails) -> None:
        if not self._expected or details.method.startswith(_HEALTH_METHODS):
            return
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                presented = value if isinstance(value, bytes) else value.encode()
                if hmac.compare_digest(presented, self._expected):
                    return
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
        if handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        behavior = handler.unary_unary
        decode = handler.request_deserializer
        method = details.method

        calls = self._metrics.calls

        async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                try:
                    request = decode(raw)
                except DecodeError:
                    raise InvalidArgument(
                        f"the request is not a valid message for {method} "
                        "(malformed protobuf or a string that is not UTF-8)"
                    ) from None
                response = await behavior(request, context)
            except RerankError as error:
                calls.labels(method, error.status.name).inc()
                await context.abort(error.status, str(error))
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

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )


def _refusal(handler: grpc.RpcMethodHandler, error: RerankError) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only aborts with ``error``."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(error.status, str(error))

    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(refuse)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(refuse)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(refuse)
    return grpc.stream_stream_rpc_method_handler(refuse)


class RankServicer(pb_grpc.RankServicer):
    def __init__(self, settings: Settings, engine: TritonEngine, metrics: ServiceMetrics) -> None:
        self._settings = settings
        self._engine = engine
        self._metrics = metrics
        self._chunker = DocumentChunker(settings.model_repository, settings.max_chunks_per_document)
        self._limits = CallLimits.from_settings(settings)
        self.budget = RowBudget(settings.max_rows_in_flight)
        metrics.track_rows_in_flight(lambda: self.budget.in_flight)

    def default_model(self) -> str:
        if self._settings.default_model:
            return self._settings.default_model
        if len(self._engine.models) == 1:
            return next(iter(self._engine.models))
        return ""

    async def _model(self, name: str) -> ServedModel:
        if not self._engine.models:
            await self._engine.refresh()
        if not self._engine.models:
            raise Unavailable("no model is loaded yet")
        chosen = name or self.default_model()
        if not chosen:
            raise InvalidArgument(
                f"model must be set: this server has no default among {sorted(self._engine.models)}"
            )
        model = self._engine.models.get(chosen)
        if model is None:
            raise InvalidArgument(
                f"model {chosen!r} is not served; served models: {sorted(self._engine.models)}"
            )
        return model

    def _chunking(self, request: pb.RankRequest) -> ChunkingChoice | None:
        if not request.chunking.enabled:
            return None
        settings = self._settings
        return ChunkingChoice(
            overlap=request.chunking.overlap_tokens
            if request.chunking.HasField("overlap_tokens")
            else settings.chunk_overlap_tokens,
            max_chunks=request.chunking.max_chunks or settings.max_chunks_per_document,
        )

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        limit = self._settings.inference_timeout_s
        return limit if remaining is None else max(0.001, min(limit, remaining))

    async def Rank(
        self, request: pb.RankRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankResponse:
        start = time.perf_counter()
        top_k = request.top_k if request.HasField("top_k") else None
        documents = list(request.documents)
        validate_rank_request(request.query, documents, top_k)
        self._limits.check(request.query, documents)
        chunking = self._chunking(request)
        options = resolve_options(
            request.truncation,
            request.max_document_tokens,
            chunking,
            self._settings.max_chunks_per_document,
        )
        model = await self._model(request.model)
        timeout = self._timeout(context)
        if chunking is None:
            with self.budget.hold(len(documents)):
                scores = await self._engine.score(model, request.query, documents, timeout, options)
            raw = scores.values
        else:
            with self.budget.hold(len(documents)), self._stage("chunk"):
                chunks = await asyncio.to_thread(
                    self._chunker.chunks,
                    model,
                    request.query,
                    documents,
                    chunking.overlap,
                    chunking.max_chunks,
                    request.max_document_tokens,
                )
            with self.budget.hold(len(chunks)):
                scores = await self._engine.score(
                    model,
                    request.query,
                    [c.text for c in chunks],
                    timeout,
                    options,
                    labels=[c.document for c in chunks],
                )
            raw = best_per_document(scores.values, chunks, len(documents))
        self._metrics.rows.labels(model.name).inc(len(scores.values))
        self._metrics.rows_per_call.observe(len(scores.values))
        self._metrics.stage_seconds.labels("inference").observe(scores.inference_time_s)
        values = activate(raw, model.activation, request.raw_scores)
        ranked = assemble(values, documents, top_k, request.return_documents)
        total_s = time.perf_counter() - start
        self._metrics.stage_seconds.labels("total").observe(total_s)
        return pb.RankResponse(
            results=[pb.RankResult(index=r.index, score=r.score, text=r.text) for r in ranked],
            model=model.name,
            metadata=pb.RankMetadata(
                pairs=len(scores.values),
                inference_requests=scores.requests,
                inference_time_us=int(scores.inference_time_s * 1e6),
                total_time_us=int(total_s * 1e6),
            ),
        )

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._metrics.stage_seconds.labels(name).observe(time.perf_counter() - start)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        if not self._engine.models:
            await self._engine.refresh()
        default = self.default_model()
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=m.name,
                    kind=_KINDS[m.kind],
                    max_length=m.max_length,
                    is_default=m.name == default,
                    architecture=m.architecture,
                    precision=m.precision,
                )
                for m in sorted(self._engine.models.values(), key=lambda m: m.name)
            ]
        )


class HealthMonitor:
    """Keeps ``grpc.health.v1`` in step with the engine: SERVING only while every served
    model answers a canary request (Triton's own readiness flag can lie after a stub dies).
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
        if self._on_dead_model is not None:
            found_dead = self._engine.found_dead.get(model.name)
            if found_dead is not None and found_dead > self._restarted_at:
                log.error("a call found the process of model %s dead", model.name)
                return False
        answered = self._engine.last_answer.get(model.name)
        if answered is not None and time.monotonic() - answered < self._interval_s:
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
            self._engine.trouble.clear()
            await self._set(await self.check())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._engine.trouble.wait(), self._interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._set(False)


async def create_server(
    settings: Settings,
    engine: TritonEngine,
    on_dead_model: Callable[[ServedModel], Awaitable[None]] | None = None,
    metrics: ServiceMetrics | None = None,
) -> tuple[grpc.aio.Server, int, HealthMonitor]:
    """Builds the gRPC server (not started) and binds it; returns it, its port and its
    health monitor. Health reports NOT_SERVING until the monitor has seen the engine work."""
    # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED, naming both sizes.
    # A response holds at most the request's texts plus a few bytes per result.
    send_limit = settings.max_request_bytes + 64 * settings.max_documents_per_call + (1 << 20)
    metrics = metrics or ServiceMetrics()
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(metrics, settings.resolved_api_key())],
        options=[
            ("grpc.max_receive_message_length", settings.max_request_bytes),
            ("grpc.max_send_message_length", send_limit),
        ],
    )
    pb_grpc.add_RankServicer_to_server(RankServicer(settings, engine, metrics), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
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
    return server, port, monitor


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
