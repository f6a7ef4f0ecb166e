"""Jina's rerank response (llama.cpp answers in it too). Jina's requests are Cohere v1's
shape and are served at ``POST /v1/rerank`` (:mod:`.cohere`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from reranker.service.core import RankOutcome
from reranker.service.doors.http.fields import Usage


class JinaResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, str] | None = None


class JinaResponse(BaseModel):
    model: str
    object: Literal["list"] = "list"
    usage: Usage
    results: list[JinaResult]


def jina_response(outcome: RankOutcome) -> JinaResponse:
    return JinaResponse(
        model=outcome.model.name,
        usage=Usage.of(outcome),
        results=[
            JinaResult(
                index=r.index,
                relevance_score=r.score,
                document=None if r.text is None else {"text": r.text},
            )
            for r in outcome.results
        ],
    )
