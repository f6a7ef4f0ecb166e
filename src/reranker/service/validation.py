"""Every check of a rank call, in one place: its fields, the server's limits, its truncation
and chunking options, and what the chosen model takes. A call that passes comes back as what
the core scores; one that does not raises :class:`InvalidArgument` naming the first
offending field. (Images are decoded and checked after this, off the event loop:
:func:`reranker.service.images.check_images`.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from reranker.contract.model import ModelKind, ServedModel
from reranker.contract.tensors import TruncationOptions
from reranker.service.calls import MAX_PRIORITY, ChunkingRequest, RankCall, Truncation
from reranker.service.errors import InvalidArgument
from reranker.service.images import CallImage
from reranker.service.limits import CallLimits

LEFT_TRUNCATION_REFUSED = (
    "truncation_direction LEFT is not supported: this server truncates from the right "
    "(longest first), as sentence-transformers does"
)


@dataclass(frozen=True)
class ChunkingChoice:
    overlap: int
    max_chunks: int


@dataclass(frozen=True)
class ValidCall:
    """A call that passed every check, as the core scores it."""

    documents: list[str]
    # Empty, or one entry per document.
    document_images: list[CallImage | None]
    chunking: ChunkingChoice | None
    options: TruncationOptions


def validate(call: RankCall, model: ServedModel, limits: CallLimits) -> ValidCall:
    """``call`` checked against the server's ``limits`` and what ``model`` takes."""
    return for_model(check_call(call, limits), call, model)


def check_call(call: RankCall, limits: CallLimits) -> ValidCall:
    """The checks that need no model: the core runs them before it looks the model up, so a
    bad call is refused as such even while no model is loaded, or when it names none."""
    if call.truncate_left:
        raise InvalidArgument(LEFT_TRUNCATION_REFUSED)
    if call.priority is not None and not 0 <= call.priority <= MAX_PRIORITY:
        raise InvalidArgument(
            f"priority must be 0 (the most urgent) to {MAX_PRIORITY}, got {call.priority}"
        )
    documents, document_images = list(call.documents), list(call.document_images)
    _check_fields(call, documents, document_images)
    _check_sizes(limits, call.query, documents)
    chunking = _chunking(call.chunking, limits)
    return ValidCall(documents, document_images, chunking, _options(call, chunking, limits))


def for_model(valid: ValidCall, call: RankCall, model: ServedModel) -> ValidCall:
    """A call that passed :func:`check_call`, checked against what ``model`` takes."""
    options, chunking = valid.options, valid.chunking
    if call.instruction and not model.takes_instruction:  # an empty one is none
        raise InvalidArgument(
            f"instruction is not taken by model {model.name!r} ({model.architecture}); "
            "leave it unset"
        )
    if chunking is not None and model.kind is ModelKind.CAUSAL_LM:
        raise InvalidArgument(
            f"chunking is not offered for causal-LM rerankers ({model.name!r}): their "
            "prompt is cut at the model's max length, the end of a long document first"
        )
    if chunking is not None and model.kind is ModelKind.LATE_INTERACTION:
        raise InvalidArgument(
            f"chunking is not offered for late-interaction rerankers ({model.name!r}): a "
            "document is read up to the model's document length, as MultiVectorEncoder reads it"
        )
    if call.instruction:  # an empty one is none, as CrossEncoder's empty prompt is
        options = replace(options, instruction=call.instruction)
    if call.images is not None:
        _check_takes_images(model, call)
    if model.takes_images:
        if call.max_document_tokens:
            raise InvalidArgument(
                f"max_document_tokens is not offered for vision-language rerankers "
                f"({model.name!r}): their rows are never cut (an image's tokens cannot be); "
                "leave it unset"
            )
        # A pair that does not fit is refused, naming the document.
        options = replace(options, refuse=True)
    return replace(valid, options=options)


def _check_fields(
    call: RankCall, documents: Sequence[str], document_images: Sequence[CallImage | None]
) -> None:
    """A query or document with an image may have no text."""
    if not call.query.strip() and call.query_image is None:
        raise InvalidArgument("query must not be empty")
    if not documents:
        raise InvalidArgument("documents must hold at least one document")
    if document_images and len(document_images) != len(documents):
        raise InvalidArgument(
            f"document images hold {len(document_images)} entries for {len(documents)} "
            "documents: give one per document (an empty one for a document without)"
        )
    for index, document in enumerate(documents):
        if not document.strip() and not (document_images and document_images[index]):
            raise InvalidArgument(f"documents[{index}] must not be empty")
    if call.top_k is not None and call.top_k < 1:
        raise InvalidArgument(f"top_k must be >= 1 when set, got {call.top_k}")


def _check_sizes(limits: CallLimits, query: str, documents: Sequence[str]) -> None:
    """Names the limit a call exceeds and by what."""
    if len(documents) > limits.max_documents:
        raise InvalidArgument(
            f"documents holds {len(documents)} documents; the limit is "
            f"max_documents_per_call={limits.max_documents}"
        )
    # A UTF-8 string has at least as many bytes as characters: only long ones are encoded.
    if len(query) * 4 > limits.max_query_bytes:
        size = len(query.encode("utf-8"))
        if size > limits.max_query_bytes:
            raise InvalidArgument(
                f"query is {size} bytes; the limit is max_query_bytes={limits.max_query_bytes}"
            )
    for index, document in enumerate(documents):
        if len(document) * 4 > limits.max_document_bytes:
            size = len(document.encode("utf-8"))
            if size > limits.max_document_bytes:
                raise InvalidArgument(
                    f"documents[{index}] is {size} bytes; the limit is "
                    f"max_document_bytes={limits.max_document_bytes}"
                )


def _chunking(request: ChunkingRequest | None, limits: CallLimits) -> ChunkingChoice | None:
    """A call's chunking with the server's defaults for what it left unset."""
    if request is None:
        return None
    overlap = (
        limits.chunk_overlap_tokens if request.overlap_tokens is None else request.overlap_tokens
    )
    return ChunkingChoice(overlap=overlap, max_chunks=request.max_chunks or limits.max_chunks)


def _options(
    call: RankCall, chunking: ChunkingChoice | None, limits: CallLimits
) -> TruncationOptions:
    if call.max_document_tokens < 0:
        raise InvalidArgument(f"max_document_tokens must be >= 0, got {call.max_document_tokens}")
    refuse = call.truncation == Truncation.REFUSE
    if chunking is not None:
        if refuse:
            raise InvalidArgument("truncation REFUSE and chunking exclude each other")
        if not 1 <= chunking.max_chunks <= limits.max_chunks:
            raise InvalidArgument(
                f"chunking.max_chunks must be between 1 and {limits.max_chunks}, "
                f"got {chunking.max_chunks}"
            )
    return TruncationOptions(max_document_tokens=call.max_document_tokens, refuse=refuse)


def _check_takes_images(model: ServedModel, call: RankCall) -> None:
    """Refuses an image for a model that reads text only, naming the first one."""
    if model.takes_images:
        return
    where = (
        "the query"
        if call.query_image is not None
        else next(
            f"documents[{index}]"
            for index, image in enumerate(call.document_images)
            if image is not None
        )
    )
    raise InvalidArgument(
        f"{where} is an image, but model {model.name!r} ({model.architecture}) reads text only; "
        "choose a model whose modalities include image"
    )
