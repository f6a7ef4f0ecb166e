"""Voyage AI's rerank API: ``POST /voyage/v1/rerank``."""

from __future__ import annotations

from typing import Literal

from fastapi import Request, Response
from pydantic import BaseModel, Field

from reranker.service.calls import RankCall, Truncation
from reranker.service.core import RankOutcome
from reranker.service.doors.http.errors import DetailError
from reranker.service.doors.http.fields import Document, Positive, QueryRequest, Usage, texts_field
from reranker.service.doors.http.routing import Dialect, rank

DIALECT = Dialect(DetailError)


class VoyageRequest(QueryRequest):
    documents: list[Document] = texts_field("the documents to rank")
    top_k: Positive | None = Field(None, description="return only the best top_k")
    return_documents: bool = False
    truncation: bool = Field(
        True, description="false refuses a pair that does not fit instead of truncating it"
    )

    def call(self) -> RankCall:
        return self.rank_call(
            self.documents,
            self.top_k,
            return_documents=self.return_documents,
            truncation=Truncation.LONGEST_FIRST if self.truncation else Truncation.REFUSE,
        )


class VoyageResult(BaseModel):
    index: int
    relevance_score: float
    document: str | None = None


class VoyageResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoyageResult]
    model: str
    usage: Usage


def voyage_response(outcome: RankOutcome) -> VoyageResponse:
    return VoyageResponse(
        data=[
            VoyageResult(index=r.index, relevance_score=r.score, document=r.text)
            for r in outcome.results
        ],
        model=outcome.model.name,
        usage=Usage.of(outcome),
    )


@DIALECT.rank_route("/voyage/v1/rerank", "Voyage AI")
async def voyage_rerank(
    body: VoyageRequest, request: Request, response: Response
) -> VoyageResponse:
    return voyage_response(await rank(request, body, response))
