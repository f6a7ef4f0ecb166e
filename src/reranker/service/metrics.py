"""Prometheus metrics of the rank service, exported beside Triton's own (``nv_*``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# From a short call on a GPU to a long chunked call on a CPU.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# From a small ONNX model on a fast disk to a large PyTorch one compiling.
_LOAD_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class ServiceMetrics:
    """The rank service's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        counter = partial(Counter, registry=self.registry)
        gauge = partial(Gauge, registry=self.registry)
        histogram = partial(Histogram, registry=self.registry)
        self.calls = counter(
            "reranker_calls",
            "Calls by gRPC method and status code",
            ["method", "code"],
        )
        self.rows = counter(
            "reranker_rows",
            "Rows (query-document pairs; chunks of chunked documents) scored, by model and team",
            ["model", "team"],
        )
        self.tokens = counter(
            "reranker_tokens",
            "Tokens the models read (every scored row, special tokens and prompts included), "
            "by model and team",
            ["model", "team"],
        )
        self.rows_per_call = histogram(
            "reranker_rows_per_call",
            "Rows one rank call scores",
            buckets=_ROW_BUCKETS,
        )
        self.stage_seconds = histogram(
            "reranker_stage_seconds",
            "Time per stage of a rank call: chunk, inference, total",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
        )
        self.rows_in_flight = gauge(
            "reranker_rows_in_flight",
            "Rows being scored now (admission limit: max_rows_in_flight)",
        )
        self.serving = gauge(
            "reranker_serving",
            "1 while every served model answers its canary request",
        )
        self.ignored_fields = counter(
            "reranker_ignored_fields",
            "Request fields no vendor documents, accepted and ignored, by route",
            ["route"],
        )
        self._catalog_metrics(counter, histogram)
        self.backend_restarts = counter(
            "reranker_backend_restarts",
            "Times Triton was restarted after it or a model process died",
        )

    def _catalog_metrics(
        self, counter: Callable[..., Counter], histogram: Callable[..., Histogram]
    ) -> None:
        """The model catalog's: loads, unloads, their time, and the models resident."""
        self.model_loads = counter(
            "reranker_model_loads",
            "Model loads on a first call, by model and outcome (loaded, failed)",
            ["model", "outcome"],
        )
        self.model_unloads = counter(
            "reranker_model_unloads",
            "Model unloads, by model and reason (budget, removed)",
            ["model", "reason"],
        )
        self.model_load_seconds = histogram(
            "reranker_model_load_seconds",
            "Time one model load took (room made first)",
            buckets=_LOAD_BUCKETS,
        )
        self.model_load_wait_seconds = histogram(
            "reranker_model_load_wait_seconds",
            "Time calls waited for their model to load",
            buckets=_LOAD_BUCKETS,
        )
        self.models_loaded = Gauge(
            "reranker_models_loaded", "Served models resident now", registry=self.registry
        )

    def track_rows_in_flight(self, read: Callable[[], int]) -> None:
        self.rows_in_flight.set_function(lambda: float(read()))

    def serve(self, host: str, port: int) -> int:
        """Serves ``/metrics`` over HTTP; returns the port (``port`` 0 picks one)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
