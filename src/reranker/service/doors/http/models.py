"""``GET /v1/models``: what reranker.v1's ListModels says, in OpenAI's list shape."""

from __future__ import annotations

from typing import Literal

from fastapi import Request
from pydantic import BaseModel

from reranker.service.core import ListedModel, ModelListing
from reranker.service.doors.http.errors import READ_ERRORS, TeiError, documented
from reranker.service.doors.http.routing import Dialect, core_of

DIALECT = Dialect(TeiError)
router = DIALECT.router


class ModelCard(BaseModel):
    """A model of the repository. One the server cannot describe while it is not loaded (its
    repository is only Triton's) carries its id and state, the rest left empty."""

    id: str
    object: Literal["model"] = "model"
    owned_by: str = "reranker"
    state: Literal["loaded", "loading", "unloaded", "failed"]
    is_default: bool
    kind: str = ""
    architecture: str = ""
    max_length: int = 0
    precision: str = ""
    family: str = ""
    scoring: str = ""
    takes_instruction: bool = False
    runtime: str = ""
    modalities: list[str] = []


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def model_card(listed: ListedModel, is_default: bool) -> ModelCard:
    card = ModelCard(id=listed.name, state=listed.state.value, is_default=is_default)
    m = listed.description
    if m is None:
        return card
    return card.model_copy(
        update={
            "kind": m.kind.value,
            "architecture": m.architecture,
            "max_length": m.max_length,
            "precision": m.precision.value,
            "family": m.family,
            "scoring": m.scoring.value,
            "takes_instruction": m.takes_instruction,
            "runtime": m.runtime.value,
            "modalities": list(m.modalities),
        }
    )


def model_list(listing: ModelListing) -> ModelList:
    return ModelList(data=[model_card(m, m.name == listing.default) for m in listing.models])


@router.get("/v1/models", tags=["Models"], responses=documented(TeiError, READ_ERRORS))
async def models(request: Request) -> ModelList:
    return model_list(await core_of(request).list_models())
