"""The HTTP/JSON front door: Cohere (v1, v2), Jina, Text Embeddings Inference and NVIDIA NIM
rerank shapes, served by uvicorn in the rank service's own event loop beside gRPC.

Routes only convert shapes (:mod:`.http_shapes`); the core validates, limits, batches and
scores. One gate in front of every route enforces the body size limit, the API key
(health routes are exempt) and the call's deadline, opens the server span under the caller's
``traceparent`` and counts the call, so HTTP callers get what gRPC callers get.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any, cast

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from opentelemetry import trace
from starlette.exceptions import HTTPException

from reranker.service.core import SERVER_VERSION, RankCore, RankOutcome
from reranker.service.doors.http_shapes import (
    MAX_BYTES,
    MAX_CHUNKS,
    MAX_DOCUMENTS,
    SERVED_MODEL,
    CohereError,
    CohereResponse,
    CohereV1Request,
    CohereV2Request,
    DetailError,
    ErrorShape,
    Health,
    JinaResponse,
    LlamaCppRequest,
    MixedbreadRequest,
    MixedbreadResponse,
    ModelList,
    NimRequest,
    NimResponse,
    OpenAIError,
    RankShape,
    ScoreQueriesRequest,
    ScoreRequest,
    ScoreResponse,
    TeiError,
    TeiInfo,
    TeiRank,
    TeiRequest,
    VoyageRequest,
    VoyageResponse,
    cohere_response,
    jina_response,
    mixedbread_response,
    model_list,
    nim_response,
    score_response,
    tei_info,
    tei_ranks,
    voyage_response,
)
from reranker.service.doors.security import ApiKey, uvicorn_tls
from reranker.service.errors import (
    STATUS,
    InvalidArgument,
    NotFound,
    RequestTooLarge,
    RerankError,
    http_status,
    tei_error_type,
)
from reranker.service.health import HealthMonitor
from reranker.service.metrics import ServiceMetrics
from reranker.service.tracing import caller_context
from reranker.settings import Settings

log = logging.getLogger(__name__)

# The caller's deadline in seconds, as an HTTP header (gRPC callers set a deadline instead).
TIMEOUT_HEADER = "x-request-timeout"
HEALTH_ROUTES = frozenset({"/health"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The monotonic time the current call's deadline falls at (None: no deadline), set by the gate.
_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


# Each vendor's error body on its routes (its SDK reads that one); TEI's on the rest.
_ERROR_SHAPES: dict[str, ErrorShape] = {
    "/v1/rerank": CohereError,
    "/v2/rerank": CohereError,
    "/voyage/v1/rerank": DetailError,
    "/reranking": OpenAIError,
    "/v1/reranking": OpenAIError,
    "/score": OpenAIError,
    "/v1/score": OpenAIError,
}


def error_shape(path: str) -> ErrorShape:
    return _ERROR_SHAPES.get(path, TeiError)


def error_body(error: RerankError, path: str) -> dict[str, Any]:
    """``error`` as the clients of the route at ``path`` read it."""
    return _shaped(path, str(error), http_status(error), tei_error_type(error))


def _shaped(path: str, message: str, status: int, tei_type: str) -> dict[str, Any]:
    shape = error_shape(path)
    if shape is CohereError:
        return {"message": message}
    if shape is DetailError:
        return {"detail": message}
    if shape is OpenAIError:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "code": int(status)}}
    return {"error": message, "error_type": tei_type}


def _error_response(error: RerankError, path: str) -> JSONResponse:
    return JSONResponse(error_body(error, path), status_code=http_status(error))


def _header_safe(name: str) -> str:
    """A field name as an ASCII header value (a name may hold any character JSON can)."""
    return ascii(name)[1:-1].replace(",", "\\x2c")


def _remaining(core: RankCore) -> float:
    deadline = _deadline.get()
    return core.timeout(None if deadline is None else deadline - time.monotonic())


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        if item.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
        else:
            parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request body is invalid"


# What a rank route may answer besides 200 (413 and 401 come from the gate, 422 from a
# deployment that cannot chunk, 429 from the row budget, 503/504 from the engine).
_RANK_ERRORS = (400, 401, 413, 422, 429, 500, 503, 504)
_READ_ERRORS = (401, 500, 503)
IGNORED_HEADER = "x-ignored-fields"


def _errors(path: str, statuses: Sequence[int] = _RANK_ERRORS) -> dict[int | str, Any]:
    shape = error_shape(path)
    return {
        status: {"model": shape, "description": HTTPStatus(status).phrase} for status in statuses
    }


def create_app(core: RankCore, monitor: HealthMonitor, metrics: ServiceMetrics) -> FastAPI:
    """The routes, over ``core``; ``/health`` reports what ``monitor`` decides."""
    # The API docs serve Swagger UI's and ReDoc's assets from this server (fastapi-offline),
    # so /docs works where the public CDNs cannot be reached, behind the same gate.
    app = FastAPIOffline(
        title="reranker",
        version=SERVER_VERSION,
        description="Rerank shapes of Cohere, Jina, Text Embeddings Inference, NVIDIA NIM, "
        "Voyage, Mixedbread, vLLM and llama.cpp over one core. The gRPC API reranker.v1 is "
        "the primary API. Fields a route does not act on are accepted and named in the "
        f"{IGNORED_HEADER} response header.",
    )

    @app.exception_handler(RerankError)
    async def rerank_error(request: Request, error: RerankError) -> JSONResponse:
        return _error_response(error, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(InvalidArgument(_validation_message(error)), request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Logged by the gate, which sees the exception once this answer is sent.
        return _error_response(RerankError("internal error"), request.url.path)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        path = request.url.path
        if error.status_code == HTTPStatus.NOT_FOUND:
            return _error_response(NotFound(f"no route {path}"), path)
        # Starlette's own answers: a body it could not parse, a method the route lacks.
        return JSONResponse(
            _shaped(path, str(error.detail), error.status_code, "Validation"),
            status_code=error.status_code,
            headers=error.headers,
        )

    async def rank(body: RankShape, response: Response, route: str) -> RankOutcome:
        """Scores a request of any shape; names the fields it did not act on."""
        ignored, unknown = body.ignored(), body.unknown()
        if ignored:
            response.headers[IGNORED_HEADER] = ",".join(map(_header_safe, ignored))
        if unknown:
            metrics.ignored_fields.labels(route).inc(len(unknown))
        outcome: RankOutcome = await core.rank(body.call(), _remaining(core))
        return outcome

    @app.post(
        "/v2/rerank",
        tags=["Cohere", "vLLM"],
        response_model_exclude_none=True,
        responses=_errors("/v2/rerank"),
    )
    async def cohere_v2(body: CohereV2Request, response: Response) -> CohereResponse:
        outcome = await rank(body, response, "/v2/rerank")
        return cohere_response(outcome, str(uuid.uuid4()), "2", body)

    @app.post(
        "/v1/rerank",
        tags=["Cohere", "Jina", "vLLM", "llama.cpp"],
        response_model_exclude_none=True,
        responses=_errors("/v1/rerank"),
    )
    async def cohere_v1(body: CohereV1Request, response: Response) -> CohereResponse:
        outcome = await rank(body, response, "/v1/rerank")
        return cohere_response(outcome, str(uuid.uuid4()), "1", body)

    @app.post(
        "/rerank",
        tags=["Text Embeddings Inference", "llama.cpp"],
        response_model_exclude_none=True,
        responses=_errors("/rerank"),
        description="TEI's shape (texts) or llama.cpp's (documents), told apart by the body.",
    )
    async def tei_rerank(
        body: TeiRequest | LlamaCppRequest, response: Response
    ) -> list[TeiRank] | JinaResponse:
        outcome = await rank(body, response, "/rerank")
        return tei_ranks(outcome) if isinstance(body, TeiRequest) else jina_response(outcome)

    @app.post(
        "/reranking",
        tags=["llama.cpp"],
        response_model_exclude_none=True,
        responses=_errors("/reranking"),
    )
    async def llama_reranking(body: LlamaCppRequest, response: Response) -> JinaResponse:
        return jina_response(await rank(body, response, "/reranking"))

    @app.post(
        "/v1/reranking",
        tags=["Mixedbread", "llama.cpp"],
        response_model_exclude_none=True,
        responses=_errors("/v1/reranking"),
        description="Mixedbread's shape (input) or llama.cpp's (documents), told apart by "
        "the body.",
    )
    async def v1_reranking(
        body: MixedbreadRequest | LlamaCppRequest, response: Response
    ) -> MixedbreadResponse | JinaResponse:
        outcome = await rank(body, response, "/v1/reranking")
        if isinstance(body, MixedbreadRequest):
            return mixedbread_response(outcome, body)
        return jina_response(outcome)

    @app.post(
        "/voyage/v1/rerank",
        tags=["Voyage AI"],
        response_model_exclude_none=True,
        responses=_errors("/voyage/v1/rerank"),
    )
    async def voyage_rerank(body: VoyageRequest, response: Response) -> VoyageResponse:
        return voyage_response(await rank(body, response, "/voyage/v1/rerank"))

    for score_path in ("/score", "/v1/score"):

        @app.post(score_path, tags=["vLLM"], responses=_errors(score_path))
        async def score(
            body: ScoreRequest | ScoreQueriesRequest, response: Response
        ) -> ScoreResponse:
            outcome = await rank(body, response, "/score")
            return score_response(outcome, f"score-{uuid.uuid4().hex}")

    @app.post("/v1/ranking", tags=["NVIDIA NIM"], responses=_errors("/v1/ranking"))
    async def nim_ranking(body: NimRequest, response: Response) -> NimResponse:
        return nim_response(await rank(body, response, "/v1/ranking"))

    @app.get("/info", tags=["Text Embeddings Inference"], responses=_errors("/info", _READ_ERRORS))
    async def info() -> TeiInfo:
        return tei_info(await core.server_info())

    @app.get(
        "/health",
        tags=["Text Embeddings Inference"],
        responses={503: {"model": Health, "description": "not serving"}},
    )
    async def health() -> JSONResponse:
        if monitor.serving.is_set():
            return JSONResponse({"status": "SERVING"})
        return JSONResponse({"status": "NOT_SERVING"}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)

    @app.get("/v1/models", tags=["Models"], responses=_errors("/v1/models", _READ_ERRORS))
    async def models() -> ModelList:
        return model_list(await core.list_models())

    described = app.openapi

    def openapi() -> dict[str, Any]:
        return describe_limits(described(), core)

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def describe_limits(schema: dict[str, Any], core: RankCore) -> dict[str, Any]:
    """The OpenAPI description with the ``x-*`` markers of :mod:`.http_shapes` filled in from
    the server's settings and the models it serves now."""
    settings = core.settings
    served = ["", *sorted(core.served_models())]
    sizes = {"query": settings.max_query_bytes, "document": settings.max_document_bytes}

    def fill(node: Any) -> Any:
        if isinstance(node, list):
            return [fill(item) for item in node]
        if not isinstance(node, dict):
            return node
        filled = {key: fill(value) for key, value in node.items()}
        if filled.pop(SERVED_MODEL, False) and len(served) > 1:
            filled["enum"] = served
        if filled.pop(MAX_DOCUMENTS, False):
            filled["maxItems"] = settings.max_documents_per_call
        if filled.pop(MAX_CHUNKS, False):
            filled["maximum"] = settings.max_chunks_per_document
        kind = filled.pop(MAX_BYTES, None)
        if kind is not None:
            filled["x-max-utf8-bytes"] = sizes[kind]
        return filled

    return cast(dict[str, Any], fill(copy.deepcopy(schema)))


class Gate:
    """ASGI middleware in front of every route: body size limit, API key, deadline header,
    server span and call metrics."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        api_key: ApiKey,
        tracer: trace.Tracer,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._api_key = api_key
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path = scope["path"]
        label = f"{scope['method']} {path}"
        headers = [(k.decode("latin-1"), v) for k, v in scope.get("headers", ())]
        status: list[int] = [HTTPStatus.INTERNAL_SERVER_ERROR]

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        with self._tracer.start_as_current_span(
            label,
            context=caller_context(headers),
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": path},
        ) as span:
            try:
                self._authenticate(path, headers)
                body = await self._read_body(headers, receive)
                with self._deadline(headers):
                    await self._app(scope, _replay(body), recording_send)
            except RerankError as error:
                log.info("refused %s: %s", label, error)
                await _error_response(error, path)(scope, receive, recording_send)
            except Exception:  # the app has answered 500 already: log it, go on serving
                log.exception("unexpected error in %s", label)
            if status[0] >= HTTPStatus.BAD_REQUEST:
                span.set_status(trace.StatusCode.ERROR, str(status[0]))
            span.set_attribute("http.response.status_code", status[0])
        self._metrics.calls.labels(_route_label(scope), _code_name(status[0])).inc()

    def _authenticate(self, path: str, headers: list[tuple[str, bytes]]) -> None:
        if path not in HEALTH_ROUTES:
            self._api_key.check(headers)

    async def _read_body(self, headers: list[tuple[str, bytes]], receive: Receive) -> bytes:
        for key, value in headers:
            if key == "content-length" and value.isdigit() and int(value) > self._max_body:
                raise RequestTooLarge(self._too_large(int(value)))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise RequestTooLarge(self._too_large(size, at_least=True))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        more = "more than " if at_least else ""
        return (
            f"the request body is {more}{size} bytes; the limit is "
            f"max_request_bytes={self._max_body}"
        )

    @contextlib.contextmanager
    def _deadline(self, headers: list[tuple[str, bytes]]) -> Iterator[None]:
        raw = next((v for k, v in headers if k == TIMEOUT_HEADER), None)
        if raw is None:
            yield
            return
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not seconds > 0 or seconds == float("inf"):
            raise InvalidArgument(
                f"header {TIMEOUT_HEADER} must be a positive number of seconds, got {raw!r}"
            )
        token = _deadline.set(time.monotonic() + seconds)
        try:
            yield
        finally:
            _deadline.reset(token)


def _route_label(scope: Scope) -> str:
    """The calls metric's method label: the route's template, so paths that match no route
    (a scanner's 404s) share one series instead of adding one each."""
    route = scope.get("route")
    template = getattr(route, "path", None)
    return f"{scope['method']} {template if isinstance(template, str) else '<unmatched>'}"


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        # After the body, the app only waits for a disconnect (streaming responses).
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}  # pragma: no cover

    return receive


# HTTP statuses as the gRPC code names the calls metric uses for every transport, read back
# from the one status table.
_CODE_NAMES = {int(http): code.name for code, http, _ in STATUS.values()} | {
    200: "OK",
    405: "UNIMPLEMENTED",  # a route without that method, as gRPC names a missing method
}


def _code_name(status: int) -> str:
    return _CODE_NAMES.get(status, "INTERNAL" if status >= 500 else "UNKNOWN")


class _Server(uvicorn.Server):
    # The rank service handles SIGINT and SIGTERM itself and stops this server in turn.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """uvicorn serving :func:`create_app` on a socket bound up front (so the port is known
    before it starts), with the rank service's TLS files."""

    def __init__(
        self,
        settings: Settings,
        core: RankCore,
        metrics: ServiceMetrics,
        monitor: HealthMonitor,
        api_key: ApiKey,
        tracer: trace.Tracer,
    ) -> None:
        self._settings = settings
        routes = create_app(core, monitor, metrics)
        app = Gate(routes, metrics, settings.max_request_bytes, api_key, tracer)
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_level="warning",
            log_config=None,
            # The C parser: h11's pure-Python one costs CPU the encoder needs on a small machine.
            http="httptools",
            ws="none",
            **uvicorn_tls(settings),
        )
        self._server = _Server(self._config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    def bind(self) -> int:
        host, port = self._settings.host, self._settings.http_port
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.set_inheritable(True)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        return self.port

    async def start(self) -> None:
        if self._socket is None:
            self.bind()
        assert self._socket is not None
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self, grace_s: float) -> None:
        """Refuses new connections and gives calls in flight ``grace_s`` to finish."""
        if self._task is None:
            if self._socket is not None:
                self._socket.close()
            return
        # Annotated as int by uvicorn; it is only passed on to asyncio.wait_for.
        self._config.timeout_graceful_shutdown = max(grace_s, 0.001)  # type: ignore[assignment]
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
