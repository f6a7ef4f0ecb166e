"""Error bodies, as each vendor's clients read them: a route answers in its dialect's shape
(its SDK reads that one), every other path in Text Embeddings Inference's."""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from reranker.service.errors import RerankError, http_status, retry_after, tei_error_type


class TeiError(BaseModel):
    """Text Embeddings Inference's error (also NIM's and the server's own routes)."""

    error: str
    error_type: str


class CohereError(BaseModel):
    message: str


class DetailError(BaseModel):
    """Voyage's (and FastAPI's) error."""

    detail: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class OpenAIError(BaseModel):
    """vLLM's, llama.cpp's and Mixedbread's error (OpenAI's shape)."""

    error: OpenAIErrorDetail


ErrorShape = type[TeiError] | type[CohereError] | type[DetailError] | type[OpenAIError]

# What a rank route may answer besides 200 (413 and 401 come from the gate, 422 from a
# deployment that cannot chunk, 429 from the row budget, 503/504 from the engine).
RANK_ERRORS = (400, 401, 413, 422, 429, 500, 503, 504)
READ_ERRORS = (401, 500, 503)


def documented(shape: ErrorShape, statuses: Sequence[int] = RANK_ERRORS) -> dict[int | str, Any]:
    """A route's error answers for its OpenAPI description, in ``shape``."""
    return {
        status: {"model": shape, "description": HTTPStatus(status).phrase} for status in statuses
    }


def shaped(shape: ErrorShape, message: str, status: int, tei_type: str) -> dict[str, Any]:
    if shape is CohereError:
        return {"message": message}
    if shape is DetailError:
        return {"detail": message}
    if shape is OpenAIError:
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "code": int(status)}}
    return {"error": message, "error_type": tei_type}


def error_body(error: RerankError, shape: ErrorShape) -> dict[str, Any]:
    """``error`` as the clients of a route of ``shape`` read it."""
    return shaped(shape, str(error), http_status(error), tei_error_type(error))


def error_response(error: RerankError, shape: ErrorShape) -> JSONResponse:
    hint = retry_after(error)
    headers = {"Retry-After": hint} if hint else None
    return JSONResponse(error_body(error, shape), status_code=http_status(error), headers=headers)


def validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body") or "body"
        if item.get("type") == "json_invalid":
            parts.append("the body is not valid JSON")
        else:
            parts.append(f"{location}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "the request body is invalid"
