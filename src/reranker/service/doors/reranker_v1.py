"""``reranker.v1.Rank`` over the core, and the interceptor every gRPC service on the port
passes through (API key, server span, decoding, the error taxonomy as status codes)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from opentelemetry import trace
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.contract.model import ModelKind
from reranker.service.core import ChunkingRequest, RankCall, RankCore, Truncation
from reranker.service.doors.security import ApiKey
from reranker.service.errors import InvalidArgument, RerankError, Unauthenticated, grpc_status
from reranker.service.images import CallImage
from reranker.service.metrics import ServiceMetrics
from reranker.service.ranking import RankedDocument
from reranker.service.tracing import caller_context

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Rank"].full_name
KINDS = {
    ModelKind.CROSS_ENCODER: pb.MODEL_KIND_CROSS_ENCODER,
    ModelKind.BI_ENCODER: pb.MODEL_KIND_BI_ENCODER,
    ModelKind.CAUSAL_LM: pb.MODEL_KIND_CAUSAL_LM,
}


HEALTH_METHODS = "/" + health_pb2.DESCRIPTOR.services_by_name["Health"].full_name + "/"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps the error taxonomy to gRPC status codes (:mod:`reranker.service.errors`), opens
    each call's server span under the caller's ``traceparent``, checks the API key (health
    checks are exempt, so probes need no secret) and decodes unary requests itself, so a
    malformed message is INVALID_ARGUMENT rather than a bare INTERNAL."""

    def __init__(
        self, metrics: ServiceMetrics, api_key: ApiKey, tracer: trace.Tracer | None = None
    ) -> None:
        self._metrics = metrics
        self._api_key = api_key
        self._tracer = tracer or trace.NoOpTracer()

    def _authenticate(self, details: grpc.HandlerCallDetails) -> None:
        if not details.method.startswith(HEALTH_METHODS):
            self._api_key.check(details.invocation_metadata or ())

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
        query_image=_image(request.query_image) if request.HasField("query_image") else None,
        document_images=[
            _image(image) if image.data else None for image in request.document_images
        ],
    )


def _image(image: pb.Image) -> CallImage:
    return CallImage(image.data, image.media_type)


def _result(result: RankedDocument) -> pb.RankResult:
    image = result.image
    return pb.RankResult(
        index=result.index,
        score=result.score,
        text=result.text,
        image=None if image is None else pb.Image(data=image.data, media_type=image.media_type),
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
            results=[_result(r) for r in outcome.results],
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
                    precision=m.precision.value,
                    family=m.family,
                    scoring=m.scoring.value,
                    takes_instruction=m.takes_instruction,
                    runtime=m.runtime.value,
                    modalities=m.modalities,
                )
                for m in listing.models
            ]
        )
