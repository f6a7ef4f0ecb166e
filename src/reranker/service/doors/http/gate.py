"""The gate in front of every HTTP route (ASGI middleware), as the gRPC doors' interceptor
is in front of theirs: the body size limit, the API key (health routes are exempt), the
call's deadline header, the server span under the caller's ``traceparent``, and the calls
metric, so HTTP callers get what gRPC callers get."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from opentelemetry import trace

from reranker.service.callers import Caller, KeyRing, calling_as
from reranker.service.doors.http.app import error_shape
from reranker.service.doors.http.errors import error_response
from reranker.service.doors.http.routing import deadline_in
from reranker.service.doors.http.tei import HEALTH_ROUTES
from reranker.service.errors import STATUS, InvalidArgument, RequestTooLarge, RerankError
from reranker.service.metrics import ServiceMetrics
from reranker.service.tracing import caller_context

log = logging.getLogger(__name__)

# The caller's deadline in seconds, as an HTTP header (gRPC callers set a deadline instead).
TIMEOUT_HEADER = "x-request-timeout"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Gate:
    """ASGI middleware in front of every route: body size limit, API key, deadline header,
    server span and call metrics."""

    def __init__(
        self,
        app: FastAPI,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        keys: KeyRing,
        tracer: trace.Tracer,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._keys = keys
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
                caller = self._authenticate(path, headers)
                span.set_attribute("team", caller.team)
                body = await self._read_body(headers, receive)
                with self._deadline(headers), calling_as(caller):
                    await self._app(scope, _replay(body), recording_send)
            except RerankError as error:
                log.info("refused %s: %s", label, error)
                answer = error_response(error, error_shape(self._app, path))
                await answer(scope, receive, recording_send)
            except Exception:  # the app has answered 500 already: log it, go on serving
                log.exception("unexpected error in %s", label)
            if status[0] >= HTTPStatus.BAD_REQUEST:
                span.set_status(trace.StatusCode.ERROR, str(status[0]))
            span.set_attribute("http.response.status_code", status[0])
        self._metrics.calls.labels(_route_label(scope), _code_name(status[0])).inc()

    def _authenticate(self, path: str, headers: list[tuple[str, bytes]]) -> Caller:
        if path in HEALTH_ROUTES:
            return Caller()
        return self._keys.caller(headers)

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
        with deadline_in(seconds):
            yield


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
