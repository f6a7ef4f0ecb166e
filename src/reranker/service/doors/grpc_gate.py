"""The gate in front of every gRPC method of every service (reranker.v1, tei.v1, health,
reflection), as :mod:`.http.gate` is in front of every HTTP route: the API key, the server
span, request decoding, the calls metric, and the one error taxonomy mapped to gRPC status
codes. Behind it, each servicer holds the one core (:class:`CoreServicer`)."""

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

from reranker.service.callers import Caller, KeyRing, calling_as
from reranker.service.core import RankCore
from reranker.service.errors import (
    InvalidArgument,
    RerankError,
    Unauthenticated,
    grpc_status,
    retry_after,
)
from reranker.service.metrics import ServiceMetrics
from reranker.service.tracing import caller_context

log = logging.getLogger(__name__)


class CoreServicer:
    """A servicer of the doors: it converts its service's shapes to the core's and back."""

    def __init__(self, core: RankCore) -> None:
        self._core = core


HEALTH_METHODS = "/" + health_pb2.DESCRIPTOR.services_by_name["Health"].full_name + "/"


class GrpcGate(grpc.aio.ServerInterceptor):
    """In front of every gRPC method, as the HTTP gate is in front of every route: maps the
    error taxonomy to gRPC status codes (:mod:`reranker.service.errors`), opens
    each call's server span under the caller's ``traceparent``, checks the API key (health
    checks are exempt, so probes need no secret) and decodes unary requests itself, so a
    malformed message is INVALID_ARGUMENT rather than a bare INTERNAL."""

    def __init__(
        self, metrics: ServiceMetrics, keys: KeyRing, tracer: trace.Tracer | None = None
    ) -> None:
        self._metrics = metrics
        self._keys = keys
        self._tracer = tracer or trace.NoOpTracer()

    def _authenticate(self, details: grpc.HandlerCallDetails) -> Caller:
        if details.method.startswith(HEALTH_METHODS):
            return Caller()
        return self._keys.caller(details.invocation_metadata or ())

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        try:
            caller = self._authenticate(details)
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
                self._guard(method, metadata, caller, decoded),
                request_deserializer=None,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary is not None and not method.startswith("/grpc.reflection"):
            return grpc.stream_unary_rpc_method_handler(
                self._guard(method, metadata, caller, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _guard(
        self,
        method: str,
        metadata: Any,
        caller: Caller,
        behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        calls = self._metrics.calls
        tracer = self._tracer

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with tracer.start_as_current_span(
                method.lstrip("/"),
                context=caller_context(metadata),
                kind=trace.SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.method": method, "team": caller.team},
            ) as span:
                try:
                    with calling_as(caller):
                        response = await behavior(request, context)
                except RerankError as error:
                    status = grpc_status(error)
                    span.set_status(trace.StatusCode.ERROR, status.name)
                    calls.labels(method, status.name).inc()
                    hint = retry_after(error)
                    if hint:
                        context.set_trailing_metadata((("retry-after", hint),))
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
