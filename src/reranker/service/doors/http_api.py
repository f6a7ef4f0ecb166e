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
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from opentelemetry import trace
from starlette.exceptions import HTTPException

from reranker.service.core import SERVER_VERSION, RankCore
from reranker.service.doors.http_shapes import (
    CohereResponse,
    CohereV1Request,
    CohereV2Request,
    ModelList,
    NimRequest,
    NimResponse,
    TeiRank,
    TeiRequest,
    cohere_response,
    model_list,
    nim_response,
    tei_info,
    tei_ranks,
)
from reranker.service.doors.security import ApiKey, uvicorn_tls
from reranker.service.errors import (
    STATUS,
    InvalidArgument,
    NotFound,
    RequestTooLarge,
    RerankError,
    grpc_status,
    http_status,
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


def error_body(error: RerankError) -> dict[str, str]:
    """TEI's error shape, which the TEI clients parse; ``error_type`` is the gRPC code name."""
    return {"error": str(error), "error_type": grpc_status(error).name}


def _error_response(error: RerankError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=http_status(error))


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


def create_app(core: RankCore, monitor: HealthMonitor) -> FastAPI:
    """The routes, over ``core``; ``/health`` reports what ``monitor`` decides."""
    # The API docs serve Swagger UI's and ReDoc's assets from this server (fastapi-offline),
    # so /docs works where the public CDNs cannot be reached, behind the same gate.
    app = FastAPIOffline(
        title="reranker",
        version=SERVER_VERSION,
        description="Rerank shapes of Cohere, Jina, Text Embeddings Inference and NVIDIA NIM "
        "over one core. The gRPC API reranker.v1 is the primary API.",
    )

    @app.exception_handler(RerankError)
    async def rerank_error(request: Request, error: RerankError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error_response(InvalidArgument(_validation_message(error)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Logged by the gate, which sees the exception once this answer is sent.
        return JSONResponse(
            {"error": "internal error", "error_type": "INTERNAL"},
            status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == HTTPStatus.NOT_FOUND:
            return _error_response(NotFound(f"no route {request.url.path}"))
        return JSONResponse(
            {"error": str(error.detail), "error_type": HTTPStatus(error.status_code).name},
            status_code=error.status_code,
            headers=error.headers,
        )

    @app.post("/v2/rerank", tags=["Cohere"], response_model_exclude_none=True)
    async def cohere_v2(body: CohereV2Request) -> CohereResponse:
        outcome = await core.rank(body.call(), _remaining(core))
        return cohere_response(outcome, str(uuid.uuid4()), "2")

    @app.post("/v1/rerank", tags=["Cohere", "Jina"], response_model_exclude_none=True)
    async def cohere_v1(body: CohereV1Request) -> CohereResponse:
        outcome = await core.rank(body.call(), _remaining(core))
        return cohere_response(outcome, str(uuid.uuid4()), "1", body)

    @app.post("/rerank", tags=["Text Embeddings Inference"], response_model_exclude_none=True)
    async def tei_rerank(body: TeiRequest) -> list[TeiRank]:
        outcome = await core.rank(body.call(), _remaining(core))
        return tei_ranks(outcome)

    @app.get("/info", tags=["Text Embeddings Inference"])
    async def info() -> dict[str, Any]:
        return tei_info(await core.server_info())

    @app.get("/health", tags=["Text Embeddings Inference"])
    async def health() -> JSONResponse:
        if monitor.serving.is_set():
            return JSONResponse({"status": "SERVING"})
        return JSONResponse({"status": "NOT_SERVING"}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)

    @app.post("/v1/ranking", tags=["NVIDIA NIM"])
    async def nim_ranking(body: NimRequest) -> NimResponse:
        return nim_response(await core.rank(body.call(), _remaining(core)))

    @app.get("/v1/models", tags=["Models"])
    async def models() -> ModelList:
        return model_list(await core.list_models())

    return app


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
                await _error_response(error)(scope, receive, recording_send)
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
_CODE_NAMES = {int(http): code.name for code, http in STATUS.values()} | {
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
        app = Gate(create_app(core, monitor), metrics, settings.max_request_bytes, api_key, tracer)
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
