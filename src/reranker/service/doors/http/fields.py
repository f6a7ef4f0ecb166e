"""What every HTTP dialect's request shapes share: the field types, the tolerant reading,
documents that hold a text or an image, and the markers the OpenAPI description is filled
in through.

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

from typing import Annotated, Any, ClassVar, Protocol

from annotated_types import Ge
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.config import JsonDict

from reranker.service.calls import MAX_PRIORITY, RankCall
from reranker.service.core import RankOutcome
from reranker.service.errors import InvalidArgument
from reranker.service.images import CallImage, image_reference

# A text must hold something besides whitespace (the core refuses a blank one).
NON_BLANK = r"\S"
# Markers the HTTP door replaces in the OpenAPI description (app.describe_limits).
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


def model_field(description: str = "served model; empty or absent selects the default") -> Any:
    return Field("", description=description, json_schema_extra={SERVED_MODEL: True})


# A query and a document as the schema states them; the core enforces both (its messages).
Query = Annotated[str, Field(json_schema_extra={"pattern": NON_BLANK, MAX_BYTES: "query"})]
Document = Annotated[str, Field(json_schema_extra={"pattern": NON_BLANK, MAX_BYTES: "document"})]
_DOCUMENT_COUNT: JsonDict = {"minItems": 1, MAX_DOCUMENTS: True}
# One document, or a list of them (vLLM's score API).
Documents = Document | Annotated[list[Document], Field(json_schema_extra=_DOCUMENT_COUNT)]


def texts_field(description: str) -> Any:
    return Field(description=description, json_schema_extra=_DOCUMENT_COUNT)


def no_op_field(description: str) -> Any:
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


class QueryRequest(Tolerant):
    """The fields most shapes name alike: the served model and the query."""

    model: str = model_field()
    query: Query = Field(description="the query (not blank)")

    def rank_call(self, documents: list[str], top_k: int | None, **options: Any) -> RankCall:
        """The core call of this query against ``documents``, with the shape's options."""
        return RankCall(
            query=self.query, documents=documents, model=self.model, top_k=top_k, **options
        )


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

    NO_OP: ClassVar[frozenset[str]] = frozenset({"truncate_prompt_tokens"})

    use_activation: bool | None = Field(
        None, description="vLLM: false returns the raw logits instead of sigmoid scores"
    )
    priority: Integer | None = Field(
        None,
        description="Cohere's and vLLM's scheduling priority: 0 (the most urgent) to 9; under "
        "load lower is handled earlier and refused last (unset: the API key's default, else 0)",
        json_schema_extra={"minimum": 0, "maximum": MAX_PRIORITY},
    )
    truncate_prompt_tokens: Integer | None = no_op_field("vLLM's prompt truncation")

    @property
    def raw_scores(self) -> bool:
        return self.use_activation is False


# An image in a JSON body: base64, or a data: URL (Jina's and NIM's convention).
ImageReference = Annotated[
    str,
    Field(
        description="an image (PNG, JPEG or WebP), base64 or a data:image/...;base64, URL; "
        "for models whose modalities include image; URLs are not fetched"
    ),
]


# A document or passage object holds a text, an image or both.
TEXT_OR_IMAGE: JsonDict = {
    "anyOf": [
        {"required": [field], "properties": {field: {"type": "string"}}}
        for field in ("text", "image")
    ]
}


class DocumentObject(BaseModel):
    # Other fields are kept and returned with the document, as Cohere v1 does.
    model_config = ConfigDict(extra="allow", strict=True, json_schema_extra=TEXT_OR_IMAGE)
    text: Document | None = None
    image: ImageReference | None = None


def images_of(items: list[Any], what: str) -> list[CallImage | None]:
    """Each item's image (None for a string or an object without one); empty when no item
    has one. An object needs a text or an image."""
    images: list[CallImage | None] = []
    for index, item in enumerate(items):
        text, image = (item, None) if isinstance(item, str) else (item.text, item.image)
        if text is None and image is None:
            raise InvalidArgument(f"{what}[{index}] needs a text or an image")
        images.append(None if image is None else image_reference(image, f"{what}[{index}]"))
    return images if any(images) else []


RANK_FIELDS = Field(
    None,
    description="the fields ranked; only ['text'] (documents are ranked by their text)",
    json_schema_extra={"items": {"type": "string", "enum": ["text"]}, "maxItems": 1},
)


def texts_of(documents: list[str | DocumentObject]) -> list[str]:
    """The text each document is ranked by (an object's ``text`` field; "" beside an image)."""
    return [d if isinstance(d, str) else d.text or "" for d in documents]


def check_rank_fields(rank_fields: list[str] | None) -> None:
    if rank_fields not in (None, [], ["text"]):
        raise InvalidArgument(
            f"rank_fields {rank_fields} is not supported: documents are ranked by their "
            "'text' field"
        )


class Usage(BaseModel):
    """Token usage, in the fields each vendor names: the tokens the model read (every scored
    row, special tokens and any prompt included); a reranker generates none."""

    prompt_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, outcome: RankOutcome) -> Usage:
        return cls(prompt_tokens=outcome.tokens, total_tokens=outcome.tokens)
