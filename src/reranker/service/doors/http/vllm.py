"""vLLM's score API: ``POST /score`` and ``POST /v1/score`` (its rerank routes are Cohere's,
:mod:`.cohere`)."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from fastapi import Request, Response
from pydantic import BaseModel, Field

from reranker.service.calls import RankCall
from reranker.service.core import RankOutcome
from reranker.service.doors.http.errors import OpenAIError, documented
from reranker.service.doors.http.fields import Documents, Query, Usage, VllmOptions, model_field
from reranker.service.doors.http.routing import Dialect, rank

DIALECT = Dialect(OpenAIError)
router = DIALECT.router


class _ScoreOptions(VllmOptions):
    model: str = model_field()

    def _call(self, query: str, documents: str | list[str]) -> RankCall:
        texts = [documents] if isinstance(documents, str) else documents
        return RankCall(
            query=query,
            documents=texts,
            model=self.model,
            raw_scores=self.raw_scores,
            priority=self.priority,
        )


class ScoreRequest(_ScoreOptions):
    """One query (``text_1``) against one text or a list (``text_2``)."""

    text_1: Query = Field(
        description="the query: one text (a list of pairwise queries is not supported)"
    )
    text_2: Documents = Field(description="the texts scored against it")

    def call(self) -> RankCall:
        return self._call(self.text_1, self.text_2)


class ScoreQueriesRequest(_ScoreOptions):
    """vLLM's newer spelling: ``queries`` (one) and ``documents``."""

    queries: Query = Field(description="the query: one text")
    documents: Documents = Field(description="the texts scored against it")

    def call(self) -> RankCall:
        return self._call(self.queries, self.documents)


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: Usage


def score_response(outcome: RankOutcome, call_id: str) -> ScoreResponse:
    """Scores in the order the texts were sent, as vLLM returns them."""
    scores = sorted(outcome.results, key=lambda r: r.index)
    return ScoreResponse(
        id=call_id,
        created=int(time.time()),
        model=outcome.model.name,
        data=[ScoreData(index=r.index, score=r.score) for r in scores],
        usage=Usage.of(outcome),
    )


@router.post("/score", tags=["vLLM"], responses=documented(OpenAIError))
@router.post("/v1/score", tags=["vLLM"], responses=documented(OpenAIError))
async def score(
    body: ScoreRequest | ScoreQueriesRequest, request: Request, response: Response
) -> ScoreResponse:
    outcome = await rank(request, body, response, label="/score")
    return score_response(outcome, f"score-{uuid.uuid4().hex}")
