"""The inference engine: Triton's ensembles, reached through ``tritonclient.grpc.aio``."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from tritonclient.grpc import InferInput, InferRequestedOutput, InferResult
from tritonclient.utils import InferenceServerException

from reranker.contract.model import ServedModel
from reranker.contract.tensors import (
    DOCUMENT,
    DOCUMENT_IMAGE,
    DOCUMENT_PART,
    LONGEST_FIRST,
    QUERY,
    QUERY_IMAGE,
    QUERY_PART,
    SCORE,
    TOKENS,
    OverflowReport,
)
from reranker.service.dispatch import Dispatcher
from reranker.service.errors import (
    InferenceFailed,
    InvalidArgument,
    ModelNotLoaded,
    ModelRestarting,
    RerankError,
    Unavailable,
)
from reranker.service.scoring import BackendHealth, RowImages, ScoreCall, Scores
from reranker.service.triton_errors import translate
from reranker.service.triton_models import TritonModels

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
_MESSAGE_BYTES = 256 * 1024 * 1024
# Retries on the rank service -> Triton hop happen in one layer, the engine's own loop
# (:meth:`TritonEngine._infer`): it sees what a gRPC retry policy cannot (a replica that is
# up but still loading its models answers with an error message, not a status), and gRPC's
# round robin sends each attempt to the next ready replica. The caller -> rank service hop
# retries in the client's service config only.
# An unreachable replica leaves round robin's choice at once (its connection fails), so
# such a failure is tried 3 times and then reported: fast, where the only Triton is down.
# A replica that unloads its models to stop stays connected meanwhile (a second or two),
# answering "unknown model" at once, and round robin keeps choosing it: such a failure is
# retried for a window of time instead, which outlasts that while reaching the others many
# times over.
_UNREACHABLE_ATTEMPTS = 3
_NOT_LOADED_WINDOW_S = 2.0
_RETRY_BACKOFF_S = 0.05
_RETRY_BACKOFF_MAX_S = 0.2
_RETRY_FLOOR_S = 0.05
_SERVICE_CONFIG: dict[str, object] = {"loadBalancingConfig": [{"round_robin": {}}]}
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MESSAGE_BYTES),
    ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
    ("grpc.enable_retries", 0),
    # Reconnect quickly after Triton restarts: gRPC's default backoff grows to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def grpc_target(url: str) -> str:
    """The gRPC target for Triton: ``host:port``, a comma-separated list of ``ip:port``
    replicas, or any gRPC target URI (``dns:///triton:8001`` resolves to every replica)."""
    if "," not in url or ":///" in url or url.startswith(("ipv4:", "ipv6:")):
        return url
    addresses = replica_addresses(url)
    return ("ipv6:" if addresses[0].startswith("[") else "ipv4:") + ",".join(addresses)


def replica_addresses(url: str) -> list[str]:
    """The replicas a Triton URL names one by one (a comma-separated list), else the URL
    alone (a name a resolver expands, ``dns:///``, is reached as a whole)."""
    if ":///" in url:
        return [url]
    listed = url.split(":", 1)[1] if url.startswith(("ipv4:", "ipv6:")) else url
    return [address.strip() for address in listed.split(",") if address.strip()]


# Image bytes one request to Triton carries at most (a row's query and document images):
# every row carries its query's image, and the request must stay well within the message
# limit above.
_IMAGE_BYTES_PER_REQUEST = 64 * 1024 * 1024


def plan_requests(documents: Sequence[str], max_rows: int) -> list[list[int]]:
    """Splits document indices into inference requests of at most ``max_rows`` rows.

    Rows are ordered by length first, so each request holds documents of similar length
    and little padding is computed; requests are balanced in size so they finish together.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(documents)), key=lambda i: len(documents[i]))
    count = math.ceil(len(order) / max_rows)
    if count == 0:
        return []
    size, extra = divmod(len(order), count)
    requests: list[list[int]] = []
    start = 0
    for n in range(count):
        end = start + size + (1 if n < extra else 0)
        requests.append(order[start:end])
        start = end
    return requests


def image_requests(images: RowImages, max_rows: int) -> list[list[int]]:
    """A call's rows as requests when they carry images: ordered by image size, so rows of
    similar images travel together (a request's patches are padded to its largest row's),
    and no request over ``_IMAGE_BYTES_PER_REQUEST``."""
    sizes = [len(images.query) + len(document) for document in images.documents]
    order = sorted(range(len(sizes)), key=lambda row: sizes[row])
    requests: list[list[int]] = []
    carried = 0  # image bytes of the last request
    for row in order:
        full = not requests or len(requests[-1]) >= max_rows
        if full or carried + sizes[row] > _IMAGE_BYTES_PER_REQUEST:
            requests.append([])
            carried = 0
        requests[-1].append(row)
        carried += sizes[row]
    return requests


def _inputs(
    query: bytes, documents: list[str], images: tuple[bytes, list[bytes]] | None
) -> list[InferInput]:
    """The ensemble's input tensors for one request: a row per document, the query (and its
    image) repeated on each."""
    rows = len(documents)
    columns = {
        QUERY: np.full((rows, 1), query, dtype=np.object_),
        DOCUMENT: np.array([d.encode("utf-8") for d in documents], dtype=np.object_),
    }
    if images is not None:
        columns[QUERY_IMAGE] = np.full((rows, 1), images[0], dtype=np.object_)
        columns[DOCUMENT_IMAGE] = np.array(images[1], dtype=np.object_)
    inputs = []
    for name, values in columns.items():
        tensor = InferInput(name, [rows, 1], "BYTES")
        tensor.set_data_from_numpy(values.reshape(rows, 1))
        inputs.append(tensor)
    return inputs


def _outputs(model: ServedModel) -> tuple[str, ...]:
    return (SCORE, TOKENS) if model.counts_tokens else (SCORE,)


def _scores(result: Any, model: str, rows: int, counted: bool) -> tuple[np.ndarray, int]:
    """One score per row of a request, and the tokens of its rows where the model counts
    them; or the failure of a model that answered fewer rows."""
    scores = result.as_numpy(SCORE)
    if scores is None or scores.size != rows:
        raise InferenceFailed(f"model {model} returned no score for some rows")
    tokens = result.as_numpy(TOKENS) if counted else None
    return scores.reshape(rows), int(tokens.sum()) if tokens is not None else 0


@dataclass
class Retries:
    """When a failed request to Triton is tried again, within the call's ``deadline``:
    pauses double from 50 ms up to 200 ms; an unreachable Triton is tried 3 times (counted
    apart from other failures: a stopping replica first answers "unknown model", then stops
    answering at all), a model not loaded until ``not_loaded_until``. A retry that could not
    begin 50 ms before the deadline is not made: the caller gets the error itself, not a
    deadline that a last, hopeless try ran into."""

    deadline: float
    not_loaded_until: float
    failed: int = 0
    unreachable: int = 0

    def pause(self, error: type[RerankError], now: float | None = None) -> float | None:
        """The pause before the next try after a failure with ``error`` (None: no retry)."""
        now = time.monotonic() if now is None else now
        self.failed += 1
        pause = min(_RETRY_BACKOFF_S * 2 ** (self.failed - 1), _RETRY_BACKOFF_MAX_S)
        if now + pause > self.deadline - _RETRY_FLOOR_S:
            return None
        if error is Unavailable:
            self.unreachable += 1
            return pause if self.unreachable < _UNREACHABLE_ATTEMPTS else None
        if error is ModelNotLoaded:
            return pause if now + pause < self.not_loaded_until else None
        return None


def _refused_row(
    error: InferenceServerException, labels: list[int], with_images: bool
) -> InvalidArgument | None:
    """The caller's error for a row the tokenizer refused as too long (None for any other
    failure), naming the document by the caller's index."""
    overflow = OverflowReport.decode(error.message() or "")
    if overflow is None:
        return None
    more = "more than " if overflow.clipped else ""
    why = "its images' tokens cannot be cut" if with_images else "truncation is REFUSE"
    if overflow.part == QUERY_PART:
        return InvalidArgument(
            f"the query has {more}{overflow.tokens} tokens; the model reads at most "
            f"{overflow.limit} query tokens ({why})"
        )
    what = " document tokens" if overflow.part == DOCUMENT_PART else ""
    with_query = "" if what else " with the query"
    return InvalidArgument(
        f"documents[{labels[overflow.row]}] has {more}{overflow.tokens} tokens{with_query}; "
        f"the model reads at most {overflow.limit}{what} ({why})"
    )


class TritonEngine(TritonModels):
    """Knows the served models (:class:`TritonModels`) and scores rows with them."""

    def __init__(
        self,
        url: str,
        max_rows_per_request: int,
        requests_in_flight_per_model: int,
        tracer: trace.Tracer | None = None,
        repository: Path | None = None,
    ) -> None:
        client = triton_aio.InferenceServerClient(grpc_target(url), channel_args=_CHANNEL_ARGS)
        addresses = replica_addresses(url)
        replicas = [
            triton_aio.InferenceServerClient(address, channel_args=_CHANNEL_ARGS)
            for address in (addresses if len(addresses) > 1 else [])
        ]
        super().__init__(url, client, repository, replicas)
        self._tracer = tracer or trace.NoOpTracer()
        self._max_rows = max_rows_per_request
        self._dispatch = Dispatcher(requests_in_flight_per_model)
        self.health = BackendHealth()

    async def score(self, call: ScoreCall) -> Scores:
        """Scores every document against the query, in as few requests as the model allows,
        each sent when the dispatcher gives it a place (:mod:`reranker.service.dispatch`)."""
        model, documents, labels = call.model, call.documents, call.labels
        images = call.images
        if model.takes_images and images is None:
            images = RowImages(b"", [b""] * len(documents))
        max_rows = max(1, min(self._max_rows, model.max_batch_size))
        if images is None:
            plan = plan_requests(documents, max_rows)
        else:
            plan = image_requests(images, max_rows)
        start = time.perf_counter()
        encoded_query = call.query.encode("utf-8")
        options = call.options
        parameters = options.parameters() if options != LONGEST_FIRST else None
        # Identifies this call's requests to the dispatcher, which takes turns between calls.
        turn_key = object()

        async def dispatched(rows: list[int]) -> tuple[np.ndarray, int]:
            async with self._dispatch.slot(model.name, turn_key, call.priority):
                return await self._infer(
                    model,
                    encoded_query,
                    [documents[i] for i in rows],
                    call.timeout_s,
                    parameters,
                    [labels[i] if labels is not None else i for i in rows],
                    None if images is None else (images.query, [images.documents[i] for i in rows]),
                )

        parts = await asyncio.gather(*(dispatched(rows) for rows in plan))
        values = np.empty(len(documents), dtype=np.float32)
        for rows, (part, _) in zip(plan, parts, strict=True):
            values[rows] = part
        tokens = sum(counted for _, counted in parts)
        return Scores(values, len(plan), time.perf_counter() - start, tokens)

    async def _infer_once(
        self,
        model: str,
        inputs: list[InferInput],
        outputs: list[InferRequestedOutput],
        time_left_s: float,
        parameters: dict[str, int | str] | None,
        attributes: dict[str, int],
    ) -> InferResult:
        with self._tracer.start_as_current_span(
            "triton.infer",
            kind=trace.SpanKind.CLIENT,
            attributes={"triton.model": model, **attributes},
        ):
            # Triton joins its own spans to the caller's trace from this header.
            headers: dict[str, str] = {}
            _PROPAGATOR.inject(headers)
            return await self._client.infer(
                model,
                inputs,
                outputs=outputs,
                client_timeout=max(time_left_s, 0.001),
                parameters=parameters,
                headers=headers or None,
            )

    async def _infer(
        self,
        served: ServedModel,
        query: bytes,
        documents: list[str],
        timeout_s: float,
        parameters: dict[str, int | str] | None,
        labels: list[int],
        images: tuple[bytes, list[bytes]] | None = None,
    ) -> tuple[np.ndarray, int]:
        model, rows = served.name, len(documents)
        inputs = _inputs(query, documents, images)
        outputs = [InferRequestedOutput(name) for name in _outputs(served)]
        begun = time.monotonic()
        retries = Retries(begun + timeout_s, begun + min(timeout_s, _NOT_LOADED_WINDOW_S))
        while True:
            started = time.monotonic()
            try:
                result = await self._infer_once(
                    model,
                    inputs,
                    outputs,
                    retries.deadline - started,
                    parameters,
                    attributes={"triton.rows": rows, "attempt": retries.failed + 1},
                )
                self.health.answered(model)
                break
            except InferenceServerException as error:
                refused = _refused_row(error, labels, images is not None)
                if refused is not None:
                    raise refused from None
                translated = translate(error, self.url)
                if isinstance(translated, Unavailable):
                    dead = started if isinstance(translated, ModelRestarting) else None
                    self.health.failed(model, dead)
                # An unreachable replica, or one still loading its models, fails at once;
                # round robin sends the next attempt to another one. (A dead model process is
                # not retried: Triton takes a second to report it, and the launcher is
                # restarting it anyway.)
                pause = retries.pause(type(translated))
                if pause is not None:
                    await asyncio.sleep(pause)
                    continue
                raise translated from None
            except grpc.RpcError as error:  # raised directly by some channel failures
                self.health.failed(model)
                pause = retries.pause(Unavailable)
                if pause is not None:
                    await asyncio.sleep(pause)
                    continue
                raise Unavailable(
                    f"inference server at {self.url} is unreachable: {error}"
                ) from None
        return _scores(result, model, rows, served.counts_tokens)
