"""Cohere's rerank API, v2 and v1: ``POST /v2/rerank`` (vLLM's too) and ``POST /v1/rerank``
(Jina's, vLLM's and llama.cpp's clients send this shape; Jina's document objects, with an
image, included)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel, Field

from reranker.service.calls import ChunkingRequest, RankCall
from reranker.service.core import RankOutcome
from reranker.service.doors.http.errors import CohereError
from reranker.service.doors.http.fields import (
    MAX_CHUNKS,
    RANK_FIELDS,
    Document,
    DocumentObject,
    Instructed,
    Positive,
    QueryRequest,
    Usage,
    VllmOptions,
    check_rank_fields,
    images_of,
    texts_field,
    texts_of,
)
from reranker.service.doors.http.routing import Dialect, rank

SEARCH_UNIT_ROWS = 100

DIALECT = Dialect(CohereError)


class CohereV2Request(QueryRequest, Instructed, VllmOptions):
    documents: list[Document] = texts_field("the documents, in the order results refer to")
    top_n: Positive | None = Field(None, description="return only the best top_n")
    max_tokens_per_doc: Positive | None = Field(
        None, description="keep at most this many tokens of each document"
    )
    return_documents: bool = Field(False, description="vLLM: return each document's text")

    def call(self) -> RankCall:
        return self.rank_call(
            self.documents,
            self.top_n,
            return_documents=self.return_documents,
            raw_scores=self.raw_scores,
            priority=self.priority,
            max_document_tokens=self.max_tokens_per_doc or 0,
            instruction=self.given_instruction(),
        )

    def document(self, index: int) -> dict[str, Any]:
        return {"text": self.documents[index]}


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class CohereResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict[str, Any]
    model: str
    # Where Jina's and vLLM's clients, which share these routes, read the tokens.
    usage: Usage


class CohereV1Request(QueryRequest, Instructed, VllmOptions):
    documents: list[Document | DocumentObject] = texts_field(
        "the documents: strings, or objects with a text field"
    )
    top_n: Positive | None = Field(None, description="return only the best top_n")
    return_documents: bool = False
    rank_fields: list[str] | None = RANK_FIELDS
    max_chunks_per_doc: Positive | None = Field(
        None,
        description="score long documents in up to this many windows (the best counts)",
        json_schema_extra={MAX_CHUNKS: True},
    )

    def call(self) -> RankCall:
        check_rank_fields(self.rank_fields)
        chunking = None
        if self.max_chunks_per_doc is not None:
            chunking = ChunkingRequest(max_chunks=self.max_chunks_per_doc)
        return self.rank_call(
            texts_of(self.documents),
            self.top_n,
            raw_scores=self.raw_scores,
            priority=self.priority,
            chunking=chunking,
            instruction=self.given_instruction(),
            document_images=images_of(self.documents, "documents"),
        )

    def document(self, index: int) -> dict[str, Any]:
        item = self.documents[index]
        return {"text": item} if isinstance(item, str) else item.model_dump(exclude_unset=True)


def cohere_response(
    outcome: RankOutcome,
    call_id: str,
    version: str,
    request: CohereV1Request | CohereV2Request,
) -> CohereResponse:
    results = [
        CohereResult(
            index=r.index,
            relevance_score=r.score,
            document=request.document(r.index) if request.return_documents else None,
        )
        for r in outcome.results
    ]
    return CohereResponse(
        id=call_id,
        results=results,
        meta={
            "api_version": {"version": version},
            # Cohere bills a search unit per query with up to 100 documents, a long document's
            # every chunk counting as one: here, per 100 rows scored.
            "billed_units": {"search_units": -(-outcome.pairs // SEARCH_UNIT_ROWS)},
            "tokens": {"input_tokens": outcome.tokens, "output_tokens": 0},
        },
        model=outcome.model.name,
        usage=Usage.of(outcome),
    )


@DIALECT.rank_route("/v2/rerank", "Cohere", "vLLM")
async def cohere_v2(body: CohereV2Request, request: Request, response: Response) -> CohereResponse:
    outcome = await rank(request, body, response)
    return cohere_response(outcome, str(uuid.uuid4()), "2", body)


@DIALECT.rank_route("/v1/rerank", "Cohere", "Jina", "vLLM", "llama.cpp")
async def cohere_v1(body: CohereV1Request, request: Request, response: Response) -> CohereResponse:
    outcome = await rank(request, body, response)
    return cohere_response(outcome, str(uuid.uuid4()), "1", body)
