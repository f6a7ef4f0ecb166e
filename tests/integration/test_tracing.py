"""OpenTelemetry: a call that carries a W3C ``traceparent`` produces its spans under that trace,
over gRPC and HTTP, with one client span per Triton request, and Triton's own spans join them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.builder.builder import DEFAULT_MODEL_NAME
from tests.integration.conftest import Server, rank_server, start_server, stop_server

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
DOCUMENTS = [f"document number {i} about rivers and the sea" for i in range(10)]
ROWS_PER_REQUEST = 4  # 10 documents -> 3 Triton requests


def _check_call_spans(spans: list[ReadableSpan], server_span_name: str) -> None:
    ours = [s for s in spans if format(s.context.trace_id, "032x") == TRACE_ID]
    (server,) = [s for s in ours if s.name == server_span_name]
    assert server.parent is not None and format(server.parent.span_id, "016x") == CALLER_SPAN
    children = [
        s for s in ours if s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    names = sorted(s.name for s in children)
    assert names == ["assemble", "triton.infer", "triton.infer", "triton.infer", "validate"]
    rows = sorted(
        cast(int, (s.attributes or {})["triton.rows"]) for s in children if s.name == "triton.infer"
    )
    assert rows == [3, 3, 4]


async def test_grpc_and_http_calls_are_traced_under_the_callers_trace(server: Server) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with rank_server(
        server.triton_grpc,
        tracer_provider=provider,
        default_model=DEFAULT_MODEL_NAME,
        max_rows_per_request=ROWS_PER_REQUEST,
    ) as service:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            stub = pb_grpc.RankStub(channel)
            await stub.Rank(
                pb.RankRequest(query="rivers", documents=DOCUMENTS),
                metadata=(("traceparent", TRACEPARENT),),
            )
        _check_call_spans(list(exporter.get_finished_spans()), "reranker.v1.Rank/Rank")
        exporter.clear()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            response = await http.post(
                "/v2/rerank",
                json={"query": "rivers", "documents": DOCUMENTS},
                headers={"traceparent": TRACEPARENT},
                timeout=60,
            )
            assert response.status_code == 200
        _check_call_spans(list(exporter.get_finished_spans()), "POST /v2/rerank")
        exporter.clear()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            await http.post("/v2/rerank", json={"query": "rivers", "documents": DOCUMENTS})
        untraced = exporter.get_finished_spans()
        # A call without traceparent starts a trace of its own.
        assert untraced and all(format(s.context.trace_id, "032x") != TRACE_ID for s in untraced)


@dataclass
class Collector:
    """An OTLP/HTTP receiver on loopback: protobuf (the rank service's SDK) or JSON (Triton)."""

    port: int
    spans: list[dict[str, Any]]


@pytest.fixture
def collector() -> Iterator[Collector]:
    spans: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            if "json" in (self.headers.get("content-type") or ""):
                spans.extend(_spans_from_json(json.loads(body)))
            else:
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                spans.extend(_spans_from_protobuf(request))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield Collector(receiver.server_port, spans)
    finally:
        receiver.shutdown()
        receiver.server_close()


def _service(attributes: list[dict[str, Any]]) -> str:
    return next((a["value"]["stringValue"] for a in attributes if a["key"] == "service.name"), "")


def _spans_from_json(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for resource in document.get("resourceSpans", []):
        service = _service(resource.get("resource", {}).get("attributes", []))
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                yield {
                    "service": service,
                    "name": span["name"],
                    "trace": span["traceId"].lower(),
                    "id": span["spanId"].lower(),
                    "parent": span.get("parentSpanId", "").lower(),
                }


def _spans_from_protobuf(request: ExportTraceServiceRequest) -> Iterator[dict[str, Any]]:
    for resource in request.resource_spans:
        service = next(
            (a.value.string_value for a in resource.resource.attributes if a.key == "service.name"),
            "",
        )
        for scope in resource.scope_spans:
            for span in scope.spans:
                yield {
                    "service": service,
                    "name": span.name,
                    "trace": span.trace_id.hex(),
                    "id": span.span_id.hex(),
                    "parent": span.parent_span_id.hex(),
                }


def _named(collector: Collector, name: str) -> list[dict[str, Any]]:
    return [s for s in list(collector.spans) if s["trace"] == TRACE_ID and s["name"] == name]


def test_otlp_export_joins_tritons_spans_to_the_call(
    default_repository: Path, tmp_path: Path, collector: Collector
) -> None:
    server = start_server(
        default_repository,
        tmp_path,
        DEFAULT_MODEL_NAME,
        otlp_endpoint=f"http://127.0.0.1:{collector.port}",
        max_rows_per_request=str(ROWS_PER_REQUEST),
    )
    try:
        response = httpx.post(
            server.http_url + "/rerank",
            json={"query": "rivers", "texts": DOCUMENTS},
            headers={"traceparent": TRACEPARENT},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        # Triton exports in batches on a timer: wait for its request spans, not for a time.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_named(collector, "InferRequest")) < 3:
            time.sleep(0.2)
    finally:
        assert stop_server(server) == 0  # the rank service's exporter flushes on shutdown
    spans = [s for s in collector.spans if s["trace"] == TRACE_ID]
    ours = {s["id"]: s for s in spans if s["service"] == "reranker"}
    (call,) = [s for s in ours.values() if s["name"] == "POST /rerank"]
    assert call["parent"] == CALLER_SPAN
    clients = {i for i, s in ours.items() if s["name"] == "triton.infer"}
    assert len(clients) == 3 and all(ours[i]["parent"] == call["id"] for i in clients)
    # Triton's request span of an inference request is a child of our client span for it.
    # (Triton 2.51 now and then exports no spans for one of several concurrent requests: seen
    # 2 of 3 in two of about ten runs; so every span that arrives must join, not all arrive.)
    triton = [s for s in spans if s["service"] == "triton"]
    requests = [s for s in triton if s["name"] == "InferRequest"]
    parents = [s["parent"] for s in requests]
    assert requests and len(set(parents)) == len(parents), (ours, triton)
    assert set(parents) <= clients, (ours, triton)
    assert any(
        s["name"].endswith("__encoder") and s["parent"] in {r["id"] for r in spans} for s in triton
    )
