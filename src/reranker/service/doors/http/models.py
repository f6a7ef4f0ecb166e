"""``GET /v1/models``: what reranker.v1's ListModels says, in OpenAI's list shape."""

from __future__ import annotations

from typing import Literal

from fastapi import Request
from pydantic import BaseModel

from reranker.service.core import ModelListing
from reranker.service.doors.http.errors import READ_ERRORS, TeiError, documented
from reranker.service.doors.http.routing import Dialect, core_of

DIALECT = Dialect(TeiError)
router = DIALECT.router


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "reranker"
    kind: str
    architecture: str
    max_length: int
    precision: str
    is_default: bool
    family: str
    scoring: str
    takes_instruction: bool
    runtime: str
    modalities: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def model_list(listing: ModelListing) -> ModelList:
    return ModelList(
        data=[
            ModelCard(
                id=m.name,
                kind=m.kind.value,
                architecture=m.architecture,
                max_length=m.max_length,
                precision=m.precision.value,
                is_default=m.name == listing.default,
                family=m.family,
                scoring=m.scoring.value,
                takes_instruction=m.takes_instruction,
                runtime=m.runtime.value,
                modalities=list(m.modalities),
            )
            for m in listing.models
        ]
    )


@router.get("/v1/models", tags=["Models"], responses=documented(TeiError, READ_ERRORS))
async def models(request: Request) -> ModelList:
    return model_list(await core_of(request).list_models())
