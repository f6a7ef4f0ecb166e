"""The JSON shapes other rerank servers speak, as pydantic models, and their conversion to and
from the core's types.

Requests are read tolerantly: each vendor's documented request fields are declared (those
with a meaning here are honoured, the others accepted and ignored), and fields no vendor
documents are accepted too; both kinds are reported back (:meth:`Tolerant.ignored`), so a
gateway's extra field does not break a call and a typo is still visible. Values are read
strictly: a known field with a bad value is refused, naming it.

Limits the core enforces (non-blank texts, the number of documents, the served models) are
stated in the OpenAPI description through the ``x-*`` markers below, which the HTTP door
fills in from the server's settings and models.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal, Protocol

from annotated_types import Ge
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

from reranker.service.core import (
    ChunkingRequest,
    ModelListing,
    RankCall,
    RankOutcome,
    ServerInfo,
    Truncation,
)
from reranker.service.errors import InvalidArgument
from reranker.service.images import CallImage, image_reference

# A text must hold something besides whitespace (the core refuses a blank one).
NON_BLANK = r"\S"
# Markers the HTTP door replaces in the OpenAPI description (http_api.describe_limits).
SERVED_MODEL = "x-served-model"
MAX_DOCUMENTS = "x-max-documents"
MAX_BYTES = "x-max-bytes"
MAX_CHUNKS = "x-max-chunks"


def _whole(value: Any) -> Any:
    """JSON Schema's integers include whole numbers written as 3.0; strings stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Integer fields of a request: strict, but a whole number written with a fraction is one.
Integer = Annotated[int, BeforeValidator(_whole)]
Positive = Annotated[int, Ge(1), BeforeValidator(_whole)]


def _model(description: str = "served model; empty or absent selects the default") -> Any:
    return Field("", description=description, json_schema_extra={SERVED_MODEL: True})


# A query and a document as the schema states them; the core enforces both (its messages).
Query = Annotated[str, Field(json_schema_extra={"pattern": NON_BLANK, MAX_BYTES: "query"})]
Document = Annotated[str, Field(json_schema_extra={"pattern": NON_BLANK, MAX_BYTES: "document"})]
_DOCUMENT_COUNT: JsonDict = {"minItems": 1, MAX_DOCUMENTS: True}
# One document, or a list of them (vLLM's score API).
Documents = Document | Annotated[list[Document], Field(json_schema_extra=_DOCUMENT_COUNT)]


def _texts(description: str) -> Any:
    return Field(description=description, json_schema_extra=_DOCUMENT_COUNT)


def _no_op(description: str) -> Any:
    return Field(None, description=f"accepted and ignored here: {description}")


class RankShape(Protocol):
    """What the HTTP door needs of a request shape."""

    def call(self) -> RankCall: ...

    def ignored(self) -> list[str]: ...

    def unknown(self) -> list[str]: ...


class Tolerant(BaseModel):
    """A request shape that keeps fields it does not name (reported, never silently used),
    and reads the values of those it names strictly (no "3" for 3, no 0 for false)."""

    model_config = ConfigDict(extra="allow", strict=True)
    # Documented fields of the vendor's API that mean nothing here.
    NO_OP: ClassVar[frozenset[str]] = frozenset()

    def ignored(self) -> list[str]:
        """Every field the call carried that the server did not act on, sorted."""
        named = {name for name in self.NO_OP if getattr(self, name) is not None}
        return sorted(named | set(self.model_extra or {}))

    def unknown(self) -> list[str]:
        """The fields no vendor documents (a subset of :meth:`ignored`)."""
        return sorted(self.model_extra or {})


class Instructed(Tolerant):
    """A shape that carries a causal-LM reranker's instruction, as ``RankRequest.instruction``
    does: unset or empty is the model's default; a model without a slot for one refuses it."""

    instruction: str | None = Field(
        None, description="the instruction of a causal-LM reranker that takes one"
    )
    instruct: str | None = Field(None, description="SGLang's spelling of instruction")

    def given_instruction(self) -> str | None:
        both = self.instruction is not None and self.instruct is not None
        if both and self.instruction != self.instruct:
            raise InvalidArgument("instruction and instruct differ: give one of them")
        return self.instruction if self.instruction is not None else self.instruct


class VllmOptions(Tolerant):
    """The fields vLLM adds to the rerank and score shapes it serves."""

    NO_OP: ClassVar[frozenset[str]] = frozenset({"priority", "truncate_prompt_tokens"})

    use_activation: bool | None = Field(
        None, description="vLLM: false returns the raw logits instead of sigmoid scores"
    )
    priority: Integer | None = _no_op("Cohere's and vLLM's scheduling priority")
    truncate_prompt_tokens: Integer | None = _no_op("vLLM's prompt truncation")

    @property
    def raw_scores(self) -> bool:
        return self.use_activation is False


# --- Cohere v2 (and vLLM's /v2/rerank): POST /v2/rerank ------------------------------------
class CohereV2Request(Instructed, VllmOptions):
    model: str = _model()
    query: Query = Field(description="the query (not blank)")
    documents: list[Document] = _texts("the documents, in the order results refer to")
    top_n: Positive | None = Field(None, description="return only the best top_n")
    max_tokens_per_doc: Positive | None = Field(
        None, description="keep at most this many tokens of each document"
    )
    return_documents: bool = Field(False, description="vLLM: return each document's text")

    def call(self) -> RankCall:
        return RankCall(
            query=self.query,
            documents=self.documents,
            model=self.model,
            top_k=self.top_n,
            return_documents=self.return_documents,
            raw_scores=self.raw_scores,
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


# --- Cohere v1, Jina, llama.cpp and vLLM: POST /v1/rerank -----------------------------------
# An image in a JSON body: base64, or a data: URL (Jina's and NIM's convention).
ImageReference = Annotated[
    str,
    Field(
        description="an image (PNG, JPEG or WebP), base64 or a data:image/...;base64, URL; "
        "for models whose modalities include image; URLs are not fetched"
    ),
]


# A document or passage object holds a text, an image or both.
_TEXT_OR_IMAGE: JsonDict = {
    "anyOf": [
        {"required": [field], "properties": {field: {"type": "string"}}}
        for field in ("text", "image")
    ]
}


class DocumentObject(BaseModel):
    # Other fields are kept and returned with the document, as Cohere v1 does.
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=_TEXT_OR_IMAGE)
    text: Document | None = None
    image: ImageReference | None = None


def _images_of(items: list[Any], what: str) -> list[CallImage | None]:
    """Each item's image (None for a string or an object without one); empty when no item
    has one. An object needs a text or an image."""
    images: list[CallImage | None] = []
    for index, item in enumerate(items):
        text, image = (item, None) if isinstance(item, str) else (item.text, item.image)
        if text is None and image is None:
            raise InvalidArgument(f"{what}[{index}] needs a text or an image")
        images.append(None if image is None else image_reference(image, f"{what}[{index}]"))
    return images if any(images) else []


_RANK_FIELDS = Field(
    None,
    description="the fields ranked; only ['text'] (documents are ranked by their text)",
    json_schema_extra={"items": {"type": "string", "enum": ["text"]}, "maxItems": 1},
)


class CohereV1Request(Instructed, VllmOptions):
    model: str = _model()
    query: Query = Field(description="the query (not blank)")
    documents: list[Document | DocumentObject] = _texts(
        "the documents: strings, or objects with a text field"
    )
    top_n: Positive | None = Field(None, description="return only the best top_n")
    return_documents: bool = False
    rank_fields: list[str] | None = _RANK_FIELDS
    max_chunks_per_doc: Positive | None = Field(
        None,
        description="score long documents in up to this many windows (the best counts)",
        json_schema_extra={MAX_CHUNKS: True},
    )

    def call(self) -> RankCall:
        _check_rank_fields(self.rank_fields)
        chunking = None
        if self.max_chunks_per_doc is not None:
            chunking = ChunkingRequest(max_chunks=self.max_chunks_per_doc)
        return RankCall(
            query=self.query,
            documents=_texts_of(self.documents),
            model=self.model,
            top_k=self.top_n,
            raw_scores=self.raw_scores,
            chunking=chunking,
            instruction=self.given_instruction(),
            document_images=_images_of(self.documents, "documents"),
        )

    def document(self, index: int) -> dict[str, Any]:
        item = self.documents[index]
        return {"text": item} if isinstance(item, str) else item.model_dump(exclude_unset=True)


def _texts_of(documents: list[str | DocumentObject]) -> list[str]:
    """The text each document is ranked by (an object's ``text`` field; "" beside an image)."""
    return [d if isinstance(d, str) else d.text or "" for d in documents]


def _check_rank_fields(rank_fields: list[str] | None) -> None:
    if rank_fields not in (None, [], ["text"]):
        raise InvalidArgument(
            f"rank_fields {rank_fields} is not supported: documents are ranked by their "
            "'text' field"
        )


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
        meta={"api_version": {"version": version}},
        model=outcome.model.name,
    )


# --- Text Embeddings Inference: POST /rerank, GET /info -------------------------------------
class TeiRequest(Instructed):
    query: Query = Field(description="the query (not blank)")
    texts: list[Document] = _texts("the texts to rank")
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


class TeiInfo(BaseModel):
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
    )


class Health(BaseModel):
    status: Literal["SERVING", "NOT_SERVING"]


# --- llama.cpp (Jina's shape): POST /rerank, /reranking, /v1/reranking ------------------------
class LlamaCppRequest(Tolerant):
    model: str = _model()
    query: Query = Field(description="the query (not blank)")
    documents: list[Document] = _texts("the documents to rank")
    top_n: Positive | None = Field(None, description="return only the best top_n")
    return_documents: bool = False

    def call(self) -> RankCall:
        return RankCall(
            query=self.query,
            documents=self.documents,
            model=self.model,
            top_k=self.top_n,
            return_documents=self.return_documents,
        )


class Usage(BaseModel):
    """Token usage, in the fields each vendor names. This server does not count tokens on
    the HTTP path: the counts are 0."""

    prompt_tokens: int = 0
    total_tokens: int = 0


class JinaResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, str] | None = None


class JinaResponse(BaseModel):
    model: str
    object: Literal["list"] = "list"
    usage: Usage = Field(default_factory=Usage)
    results: list[JinaResult]


def jina_response(outcome: RankOutcome) -> JinaResponse:
    return JinaResponse(
        model=outcome.model.name,
        results=[
            JinaResult(
                index=r.index,
                relevance_score=r.score,
                document=None if r.text is None else {"text": r.text},
            )
            for r in outcome.results
        ],
    )


# --- Voyage AI: POST /voyage/v1/rerank --------------------------------------------------------
class VoyageRequest(Tolerant):
    query: Query = Field(description="the query (not blank)")
    documents: list[Document] = _texts("the documents to rank")
    model: str = _model()
    top_k: Positive | None = Field(None, description="return only the best top_k")
    return_documents: bool = False
    truncation: bool = Field(
        True, description="false refuses a pair that does not fit instead of truncating it"
    )

    def call(self) -> RankCall:
        return RankCall(
            query=self.query,
            documents=self.documents,
            model=self.model,
            top_k=self.top_k,
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
    usage: Usage = Field(default_factory=Usage)


def voyage_response(outcome: RankOutcome) -> VoyageResponse:
    return VoyageResponse(
        data=[
            VoyageResult(index=r.index, relevance_score=r.score, document=r.text)
            for r in outcome.results
        ],
        model=outcome.model.name,
    )


# --- Mixedbread: POST /v1/reranking -----------------------------------------------------------
class MixedbreadRequest(Tolerant):
    NO_OP: ClassVar[frozenset[str]] = frozenset({"rewrite_query"})

    model: str = _model()
    query: Query = Field(description="the query (not blank)")
    input: list[Document | DocumentObject] = _texts(
        "the documents: strings, or objects with a text field"
    )
    rank_fields: list[str] | None = _RANK_FIELDS
    top_k: Positive | None = Field(None, description="return only the best top_k")
    return_input: bool = False
    rewrite_query: bool | None = _no_op("Mixedbread's query rewriting")

    def call(self) -> RankCall:
        _check_rank_fields(self.rank_fields)
        return RankCall(
            query=self.query,
            documents=_texts_of(self.input),
            model=self.model,
            top_k=self.top_k,
            document_images=_images_of(self.input, "input"),
        )


class MixedbreadResult(BaseModel):
    index: int
    score: float
    input: Any = None
    object: Literal["rank_result"] = "rank_result"


class MixedbreadResponse(BaseModel):
    usage: Usage = Field(default_factory=Usage)
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


# --- vLLM: POST /score, /v1/score -------------------------------------------------------------
class _ScoreOptions(VllmOptions):
    model: str = _model()

    def _call(self, query: str, documents: str | list[str]) -> RankCall:
        texts = [documents] if isinstance(documents, str) else documents
        return RankCall(query=query, documents=texts, model=self.model, raw_scores=self.raw_scores)


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
    usage: Usage = Field(default_factory=Usage)


def score_response(outcome: RankOutcome, call_id: str) -> ScoreResponse:
    """Scores in the order the texts were sent, as vLLM returns them."""
    scores = sorted(outcome.results, key=lambda r: r.index)
    return ScoreResponse(
        id=call_id,
        created=int(time.time()),
        model=outcome.model.name,
        data=[ScoreData(index=r.index, score=r.score) for r in scores],
    )


# --- NVIDIA NIM: POST /v1/ranking ------------------------------------------------------------
class NimText(Tolerant):
    text: Document


class NimPassage(Tolerant):
    model_config = ConfigDict(json_schema_extra=_TEXT_OR_IMAGE)
    text: Document | None = None
    image: ImageReference | None = None


class NimRequest(Tolerant):
    model: str = _model()
    query: NimText
    passages: list[NimPassage] = _texts("the passages to rank: a text, an image or both")
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
            document_images=_images_of(self.passages, "passages"),
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


# --- Error bodies, as each vendor's clients read them ----------------------------------------
class TeiError(BaseModel):
    """Text Embeddings Inference's error (also NIM's and the server's own routes)."""

    error: str
    error_type: str


class CohereError(BaseModel):
    message: str


class DetailError(BaseModel):
    """Voyage's (and FastAPI's) error."""

    detail: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    code: int


class OpenAIError(BaseModel):
    """vLLM's, llama.cpp's and Mixedbread's error (OpenAI's shape)."""

    error: OpenAIErrorDetail


ErrorShape = type[TeiError] | type[CohereError] | type[DetailError] | type[OpenAIError]
