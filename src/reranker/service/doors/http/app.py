"""The HTTP app: every dialect's routes mounted over one core, each route's errors in its
dialect's shape, and the OpenAPI description with the server's limits filled in.

Adding a dialect is one module (its request and response models and an ``APIRouter`` whose
handlers convert to the core's call and back) and one line in :data:`DIALECTS`.
"""

from __future__ import annotations

import copy
from http import HTTPStatus
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from reranker.service.core import SERVER_VERSION, RankCore
from reranker.service.doors.http import (
    cohere,
    llama_cpp,
    mixedbread,
    models,
    nim,
    tei,
    vllm,
    voyage,
)
from reranker.service.doors.http.errors import (
    ErrorShape,
    TeiError,
    error_response,
    shaped,
    validation_message,
)
from reranker.service.doors.http.fields import MAX_BYTES, MAX_CHUNKS, MAX_DOCUMENTS, SERVED_MODEL
from reranker.service.doors.http.routing import IGNORED_HEADER, Dialect
from reranker.service.errors import InvalidArgument, NotFound, RerankError
from reranker.service.health import HealthMonitor
from reranker.service.metrics import ServiceMetrics

DIALECTS: tuple[Dialect, ...] = (
    cohere.DIALECT,
    tei.DIALECT,
    llama_cpp.DIALECT,
    mixedbread.DIALECT,
    voyage.DIALECT,
    vllm.DIALECT,
    nim.DIALECT,
    models.DIALECT,
)


def error_shape(app: FastAPI, path: str) -> ErrorShape:
    """The error body the clients of ``path`` read (TEI's where no dialect owns it)."""
    shapes = cast(dict[str, ErrorShape], app.state.error_shapes)
    return shapes.get(path, TeiError)


def create_app(core: RankCore, monitor: HealthMonitor, metrics: ServiceMetrics) -> FastAPI:
    """The routes of :data:`DIALECTS`, over ``core``; ``/health`` reports what ``monitor``
    decides."""
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
    app.state.core, app.state.monitor, app.state.metrics = core, monitor, metrics
    app.state.error_shapes = {
        route.path: dialect.error_shape
        for dialect in DIALECTS
        for route in dialect.router.routes
        if hasattr(route, "path")
    }
    for dialect in DIALECTS:
        app.include_router(dialect.router)
    _answer_errors_in_shape(app)

    described = app.openapi

    def openapi() -> dict[str, Any]:
        return describe_limits(described(), core)

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _answer_errors_in_shape(app: FastAPI) -> None:
    def answer(error: RerankError, request: Request) -> JSONResponse:
        return error_response(error, error_shape(app, request.url.path))

    @app.exception_handler(RerankError)
    async def rerank_error(request: Request, error: RerankError) -> JSONResponse:
        return answer(error, request)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        return answer(InvalidArgument(validation_message(error)), request)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # Logged by the gate, which sees the exception once this answer is sent.
        return answer(RerankError("internal error"), request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        path = request.url.path
        if error.status_code == HTTPStatus.NOT_FOUND:
            return answer(NotFound(f"no route {path}"), request)
        # Starlette's own answers: a body it could not parse, a method the route lacks.
        return JSONResponse(
            shaped(error_shape(app, path), str(error.detail), error.status_code, "Validation"),
            status_code=error.status_code,
            headers=error.headers,
        )


def describe_limits(schema: dict[str, Any], core: RankCore) -> dict[str, Any]:
    """The OpenAPI description with the ``x-*`` markers of :mod:`.fields` filled in from the
    server's settings and the models of its catalog (loaded or not)."""
    settings = core.settings
    served = ["", *core.catalog_models()]
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
