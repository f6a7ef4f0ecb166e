"""The JSON shapes other rerank servers speak, as pydantic models, and their conversion to and
from the core's types. Field names follow each API's published shape; unknown fields are
refused (never silently dropped)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from reranker.service.core import (
    ChunkingRequest,
    ModelListing,
    RankCall,
    RankOutcome,
    ServerInfo,
    Truncation,
)
from reranker.service.errors import InvalidArgument


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- Cohere v2: POST /v2/rerank -------------------------------------------------------------
class CohereV2Request(Strict):
    model: str = Field("", description="served model; empty selects the default")
    query: str
    documents: list[str]
    top_n: int | None = Field(None, ge=1, description="return only the best top_n")
    max_tokens_per_doc: int | None = Field(
        None, ge=1, description="keep at most this many tokens of each document"
    )

    def call(self) -> RankCall:
        return RankCall(
            query=self.query,
            documents=self.documents,
            model=self.model,
            top_k=self.top_n,
            max_document_tokens=self.max_tokens_per_doc or 0,
        )


class CohereResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class CohereResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict[str, Any]
    model: str


# --- Cohere v1 and Jina: POST /v1/rerank ----------------------------------------------------
class DocumentObject(BaseModel):
    # Other fields are kept and returned with the document, as Cohere v1 does.
    model_config = ConfigDict(extra="allow")
    text: str


class CohereV1Request(Strict):
    model: str = ""
    query: str
    documents: list[str | DocumentObject]
    top_n: int | None = Field(None, ge=1, description="return only the best top_n")
    return_documents: bool = False
    rank_fields: list[str] | None = Field(None, description="only ['text'] is supported")
    max_chunks_per_doc: int | None = Field(
        None, ge=1, description="score long documents in up to this many windows (best counts)"
    )

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def call(self) -> RankCall:
        if self.rank_fields is not None and self.rank_fields != ["text"]:
            raise InvalidArgument(
                f"rank_fields {self.rank_fields} is not supported: documents are ranked by "
                "their 'text' field"
            )
        chunking = None
        if self.max_chunks_per_doc is not None:
            chunking = ChunkingRequest(max_chunks=self.max_chunks_per_doc)
        return RankCall(
            query=self.query,
            documents=self.texts(),
            model=self.model,
            top_k=self.top_n,
            chunking=chunking,
        )

    def document(self, index: int) -> dict[str, Any]:
        item = self.documents[index]
        return {"text": item} if isinstance(item, str) else item.model_dump()


def cohere_response(
    outcome: RankOutcome, call_id: str, version: str, request: CohereV1Request | None = None
) -> CohereResponse:
    results = [
        CohereResult(
            index=r.index,
            relevance_score=r.score,
            document=request.document(r.index)
            if request is not None and request.return_documents
            else None,
        )
        for r in outcome.results
    ]
    return CohereResponse(
        id=call_id,
        results=results,
        meta={"api_version": {"version": version}},
        model=outcome.model.name,
    )


# --- Text Embeddings Inference: POST /rerank, GET /info -----------------------------------
class TeiRequest(Strict):
    query: str
    texts: list[str]
    truncate: bool | None = Field(
        None, description="false refuses a pair that does not fit; unset or true truncates"
    )
    truncation_direction: str = Field("right", description="only 'right' is supported")
    raw_scores: bool = False
    return_text: bool = False

    def call(self) -> RankCall:
        direction = self.truncation_direction.lower()
        if direction not in ("left", "right"):
            raise InvalidArgument(
                f"truncation_direction must be 'left' or 'right', got {self.truncation_direction!r}"
            )
        return RankCall(
            query=self.query,
            documents=self.texts,
            raw_scores=self.raw_scores,
            return_documents=self.return_text,
            truncation=Truncation.REFUSE if self.truncate is False else Truncation.LONGEST_FIRST,
            truncate_left=direction == "left",
        )


class TeiRank(BaseModel):
    index: int
    score: float
    text: str | None = None


def tei_ranks(outcome: RankOutcome) -> list[TeiRank]:
    return [TeiRank(index=r.index, score=r.score, text=r.text) for r in outcome.results]


def tei_info(info: ServerInfo) -> dict[str, Any]:
    """TEI's ``/info`` body."""
    return {
        "model_id": info.model_id,
        "model_sha": None,
        "model_dtype": info.dtype,
        "model_type": {"reranker": {"id2label": {}, "label2id": {}}},
        "max_concurrent_requests": info.max_concurrent_requests,
        "max_input_length": info.max_input_length,
        "max_batch_tokens": info.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": info.max_client_batch_size,
        "auto_truncate": True,
        "tokenization_workers": 1,
        "version": info.version,
    }


# --- NVIDIA NIM: POST /v1/ranking ------------------------------------------------------------
class NimText(Strict):
    text: str


class NimRequest(Strict):
    model: str = ""
    query: NimText
    passages: list[NimText]
    truncate: Literal["NONE", "END"] = Field(
        "NONE", description="NONE refuses a pair that does not fit; END truncates it"
    )

    def call(self) -> RankCall:
        return RankCall(
            query=self.query.text,
            documents=[p.text for p in self.passages],
            model=self.model,
            raw_scores=True,
            truncation=Truncation.REFUSE if self.truncate == "NONE" else Truncation.LONGEST_FIRST,
        )


class NimRanking(BaseModel):
    index: int
    logit: float


class NimResponse(BaseModel):
    rankings: list[NimRanking]


def nim_response(outcome: RankOutcome) -> NimResponse:
    return NimResponse(rankings=[NimRanking(index=r.index, logit=r.score) for r in outcome.results])


# --- GET /v1/models: what reranker.v1 ListModels says, in OpenAI's list shape ---------------
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
            )
            for m in listing.models
        ]
    )
