"""OpenTelemetry traces of rank calls: a server span per call, its validation, one client span
per Triton request and the assembly; W3C ``traceparent`` read from the caller and passed on to
Triton. Without an OTLP endpoint the tracer is the API's no-op one, which records nothing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

SERVICE_NAME = "reranker"
_PROPAGATOR = TraceContextTextMapPropagator()


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector given as ``http://host:4318`` (or the full
    ``.../v1/traces`` URL)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def provider_for(otlp_endpoint: str) -> TracerProvider | None:
    """A provider that exports over OTLP/HTTP to ``otlp_endpoint`` ('' means no tracing)."""
    if not otlp_endpoint:
        return None
    # The SDK and exporter load only where traces are exported: serving without them needs
    # just the API (the GPU check's private install has no more).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_traces_url(otlp_endpoint)))
    )
    return provider


def tracer_from(provider: trace.TracerProvider | None) -> trace.Tracer:
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer("reranker")


def caller_context(
    headers: Iterable[tuple[str, str | bytes]] | Mapping[str, str],
) -> context.Context:
    """The trace context a caller sent (``traceparent``/``tracestate``), if any."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    carrier: dict[str, str] = {}
    for key, value in items:
        name = key.lower()
        if name in ("traceparent", "tracestate"):
            carrier[name] = value.decode("latin-1") if isinstance(value, bytes) else value
    return _PROPAGATOR.extract(carrier)
