"""The rank service: the public gRPC API (``reranker.v1.Rank``), health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from reranker_client._proto.reranker.v1 import reranker_pb2 as pb
from reranker_client._proto.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.chunking import DocumentChunker, best_per_document
from reranker.engine import TritonEngine
from reranker.errors import InvalidArgument, RerankError, Unavailable
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
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_KINDS = {
    ModelKind.CROSS_ENCODER: pb.MODEL_KIND_CROSS_ENCODER,
    ModelKind.BI_ENCODER: pb.MODEL_KIND_BI_ENCODER,
}


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps the error taxonomy to gRPC status codes: the one place that does."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        method = details.method

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except RerankError as error:
                await context.abort(error.status, str(error))
            except asyncio.CancelledError:
                raise
            except Exception:
                if context.code() is not None:  # already aborted by the handler
                    raise
                log.exception("unexpected error in %s", method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error")

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class RankServicer(pb_grpc.RankServicer):
    def __init__(self, settings: Settings, engine: TritonEngine) -> None:
        self._settings = settings
        self._engine = engine
        self._chunker = DocumentChunker(settings.model_repository, settings.max_chunks_per_document)

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
            scores = await self._engine.score(model, request.query, documents, timeout, options)
            raw = scores.values
        else:
            chunks = await asyncio.to_thread(
                self._chunker.chunks,
                model,
                request.query,
                documents,
                chunking.overlap,
                chunking.max_chunks,
                request.max_document_tokens,
            )
            scores = await self._engine.score(
                model,
                request.query,
                [c.text for c in chunks],
                timeout,
                options,
                labels=[c.document for c in chunks],
            )
            raw = best_per_document(scores.values, chunks, len(documents))
        values = activate(raw, model.activation, request.raw_scores)
        ranked = assemble(values, documents, top_k, request.return_documents)
        return pb.RankResponse(
            results=[pb.RankResult(index=r.index, score=r.score, text=r.text) for r in ranked],
            model=model.name,
            metadata=pb.RankMetadata(
                pairs=len(scores.values),
                inference_requests=scores.requests,
                inference_time_us=int(scores.inference_time_s * 1e6),
                total_time_us=int((time.perf_counter() - start) * 1e6),
            ),
        )

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
    model answers a canary request (Triton's own readiness flag can lie after a stub dies)."""

    def __init__(
        self, health_servicer: health.aio.HealthServicer, engine: TritonEngine, interval_s: float
    ) -> None:
        self._health = health_servicer
        self._engine = engine
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.serving = asyncio.Event()

    async def check(self) -> bool:
        try:
            models = await self._engine.refresh()
            for model in models.values():
                await self._engine.score(model, "canary", ["canary"], timeout_s=10.0)
        except RerankError as error:
            log.warning("engine not ready: %s", error)
            return False
        return bool(models)

    async def _set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
        if serving:
            self.serving.set()
        else:
            self.serving.clear()

    async def _run(self) -> None:
        while True:
            await self._set(await self.check())
            await asyncio.sleep(self._interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._set(False)


async def create_server(
    settings: Settings, engine: TritonEngine, health_interval_s: float = 5.0
) -> tuple[grpc.aio.Server, int, HealthMonitor]:
    """Builds the gRPC server (not started) and binds it; returns it, its port and its
    health monitor. Health reports NOT_SERVING until the monitor has seen the engine work."""
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pb_grpc.add_RankServicer_to_server(RankServicer(settings, engine), server)
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
    port = server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.grpc_port}")
    return server, port, HealthMonitor(health_servicer, engine, health_interval_s)
