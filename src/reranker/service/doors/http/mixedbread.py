"""Mixedbread's rerank API: ``POST /v1/reranking`` (also llama.cpp's shape, told apart by
the body)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from fastapi import Request, Response
from pydantic import BaseModel, Field

from reranker.service.calls import RankCall
from reranker.service.core import RankOutcome
from reranker.service.doors.http.errors import OpenAIError
from reranker.service.doors.http.fields import (
    RANK_FIELDS,
    Document,
    DocumentObject,
    Positive,
    QueryRequest,
    Usage,
    check_rank_fields,
    images_of,
    no_op_field,
    texts_field,
    texts_of,
)
from reranker.service.doors.http.jina import JinaResponse, jina_response
from reranker.service.doors.http.llama_cpp import LlamaCppRequest
from reranker.service.doors.http.routing import Dialect, rank

DIALECT = Dialect(OpenAIError)


class MixedbreadRequest(QueryRequest):
    NO_OP: ClassVar[frozenset[str]] = frozenset({"rewrite_query"})

    input: list[Document | DocumentObject] = texts_field(
        "the documents: strings, or objects with a text field"
    )
    rank_fields: list[str] | None = RANK_FIELDS
    top_k: Positive | None = Field(None, description="return only the best top_k")
    return_input: bool = False
    rewrite_query: bool | None = no_op_field("Mixedbread's query rewriting")

    def call(self) -> RankCall:
        check_rank_fields(self.rank_fields)
        return self.rank_call(
            texts_of(self.input),
            self.top_k,
            document_images=images_of(self.input, "input"),
        )


class MixedbreadResult(BaseModel):
    index: int
    score: float
    input: Any = None
    object: Literal["rank_result"] = "rank_result"


class MixedbreadResponse(BaseModel):
    usage: Usage
    model: str
    data: list[MixedbreadResult]
    object: Literal["list"] = "list"
    top_k: int
    return_input: bool


def mixedbread_response(outcome: RankOutcome, request: MixedbreadRequest) -> MixedbreadResponse:
    def sent(index: int) -> Any:
        item = request.input[index]
        return item if isinstance(item, str) else item.model_dump(exclude_unset=True)

    return MixedbreadResponse(
        usage=Usage.of(outcome),
        model=outcome.model.name,
        data=[
            MixedbreadResult(
                index=r.index, score=r.score, input=sent(r.index) if request.return_input else None
            )
            for r in outcome.results
        ],
        top_k=len(outcome.results),
        return_input=request.return_input,
    )


@DIALECT.rank_route(
    "/v1/reranking",
    "Mixedbread",
    "llama.cpp",
    description="Mixedbread's shape (input) or llama.cpp's (documents), told apart by the body.",
)
async def v1_reranking(
    body: MixedbreadRequest | LlamaCppRequest, request: Request, response: Response
) -> MixedbreadResponse | JinaResponse:
    outcome = await rank(request, body, response)
    if isinstance(body, MixedbreadRequest):
        return mixedbread_response(outcome, body)
    return jina_response(outcome)
