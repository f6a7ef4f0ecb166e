"""NVIDIA NIM's ranking API: ``POST /v1/ranking`` (passages with a text, an image or both;
scores as raw logits)."""

from __future__ import annotations

from typing import Literal

from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field

from reranker.service.calls import RankCall, Truncation
from reranker.service.core import RankOutcome
from reranker.service.doors.http.errors import TeiError, documented
from reranker.service.doors.http.fields import (
    TEXT_OR_IMAGE,
    Document,
    ImageReference,
    Tolerant,
    images_of,
    model_field,
    texts_field,
)
from reranker.service.doors.http.routing import Dialect, rank

DIALECT = Dialect(TeiError)
router = DIALECT.router


class NimText(Tolerant):
    text: Document


class NimPassage(Tolerant):
    model_config = ConfigDict(json_schema_extra=TEXT_OR_IMAGE)
    text: Document | None = None
    image: ImageReference | None = None


class NimRequest(Tolerant):
    model: str = model_field()
    query: NimText
    passages: list[NimPassage] = texts_field("the passages to rank: a text, an image or both")
    truncate: Literal["NONE", "END"] = Field(
        "NONE", description="NONE refuses a pair that does not fit; END truncates it"
    )

    def ignored(self) -> list[str]:
        nested = [f"query.{name}" for name in self.query.ignored()]
        nested += [
            f"passages[{i}].{name}" for i, p in enumerate(self.passages) for name in p.ignored()
        ]
        return sorted([*super().ignored(), *nested])

    def unknown(self) -> list[str]:
        return self.ignored()

    def call(self) -> RankCall:
        return RankCall(
            query=self.query.text,
            documents=[p.text or "" for p in self.passages],
            model=self.model,
            raw_scores=True,
            truncation=Truncation.REFUSE if self.truncate == "NONE" else Truncation.LONGEST_FIRST,
            document_images=images_of(self.passages, "passages"),
        )


class NimRanking(BaseModel):
    index: int
    logit: float


class NimResponse(BaseModel):
    rankings: list[NimRanking]


def nim_response(outcome: RankOutcome) -> NimResponse:
    return NimResponse(rankings=[NimRanking(index=r.index, logit=r.score) for r in outcome.results])


@router.post("/v1/ranking", tags=["NVIDIA NIM"], responses=documented(TeiError))
async def nim_ranking(body: NimRequest, request: Request, response: Response) -> NimResponse:
    return nim_response(await rank(request, body, response))
