"""Text Embeddings Inference's API: ``POST /rerank`` (also llama.cpp's shape, told apart by
the body), ``GET /info`` and ``GET /health``."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal, cast

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from reranker.service.calls import RankCall, Truncation
from reranker.service.core import RankOutcome, ServerInfo
from reranker.service.doors.http.errors import READ_ERRORS, TeiError, documented
from reranker.service.doors.http.fields import Document, Instructed, Query, texts_field
from reranker.service.doors.http.jina import JinaResponse, jina_response
from reranker.service.doors.http.llama_cpp import LlamaCppRequest
from reranker.service.doors.http.routing import Dialect, core_of, rank
from reranker.service.errors import InvalidArgument
from reranker.service.health import HealthMonitor

DIALECT = Dialect(TeiError, APIRouter(tags=["Text Embeddings Inference"]))
router = DIALECT.router
# Routes a caller reaches without an API key.
HEALTH_ROUTES = frozenset({"/health"})


class TeiRequest(Instructed):
    query: Query = Field(description="the query (not blank)")
    texts: list[Document] = texts_field("the texts to rank")
    truncate: bool | None = Field(
        None, description="false refuses a pair that does not fit; unset or true truncates"
    )
    truncation_direction: str = Field(
        "right",
        description="Right only: this server truncates from the right, longest first "
        "(Left is refused with a message)",
        json_schema_extra={"enum": ["right", "Right"]},
    )
    raw_scores: bool = False
    return_text: bool = False

    def call(self) -> RankCall:
        direction = self.truncation_direction
        if direction not in ("right", "Right", "left", "Left"):
            raise InvalidArgument(
                f"truncation_direction must be 'Right' (or 'Left', refused), got {direction!r}"
            )
        return RankCall(
            query=self.query,
            documents=self.texts,
            raw_scores=self.raw_scores,
            return_documents=self.return_text,
            truncation=Truncation.REFUSE if self.truncate is False else Truncation.LONGEST_FIRST,
            truncate_left=direction.lower() == "left",
            instruction=self.given_instruction(),
        )


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


def tei_ranks(outcome: RankOutcome) -> list[TeiRank]:
    return [TeiRank(index=r.index, score=r.score, text=r.text) for r in outcome.results]


class CatalogModel(BaseModel):
    model_id: str
    state: Literal["loaded", "loading", "unloaded", "failed"]


class TeiInfo(BaseModel):
    """TEI's fields, for the default model, and ``models``: every model of the catalog with
    its state (this server serves many; TEI's clients read the fields they know)."""

    model_id: str
    model_sha: str | None = None
    model_dtype: str
    model_type: dict[str, Any]
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None = None
    max_client_batch_size: int
    auto_truncate: bool = True
    tokenization_workers: int = 1
    version: str
    models: list[CatalogModel]


def tei_info(info: ServerInfo) -> TeiInfo:
    return TeiInfo(
        model_id=info.model_id,
        model_dtype=info.dtype,
        model_type={"reranker": {"id2label": {}, "label2id": {}}},
        max_concurrent_requests=info.max_concurrent_requests,
        max_input_length=info.max_input_length,
        max_batch_tokens=info.max_batch_tokens,
        max_client_batch_size=info.max_client_batch_size,
        version=info.version,
        models=[
            CatalogModel(model_id=name, state=state.value) for name, state in info.models.items()
        ],
    )


class Health(BaseModel):
    status: Literal["SERVING", "NOT_SERVING"]


@DIALECT.rank_route(
    "/rerank",
    "llama.cpp",
    description="TEI's shape (texts) or llama.cpp's (documents), told apart by the body.",
)
async def tei_rerank(
    body: TeiRequest | LlamaCppRequest, request: Request, response: Response
) -> list[TeiRank] | JinaResponse:
    outcome = await rank(request, body, response)
    return tei_ranks(outcome) if isinstance(body, TeiRequest) else jina_response(outcome)


@router.get("/info", responses=documented(TeiError, READ_ERRORS))
async def info(request: Request) -> TeiInfo:
    return tei_info(await core_of(request).server_info())


@router.get("/health", responses={503: {"model": Health, "description": "not serving"}})
async def health(request: Request) -> JSONResponse:
    monitor = cast(HealthMonitor, request.app.state.monitor)
    if monitor.serving.is_set():
        return JSONResponse({"status": "SERVING"})
    return JSONResponse({"status": "NOT_SERVING"}, status_code=HTTPStatus.SERVICE_UNAVAILABLE)
