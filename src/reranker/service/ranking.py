"""Pure logic of a rank call: validation, splitting rows into requests, result assembly."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reranker.backend.tokenization import TruncationOptions
from reranker.contract.model import Activation
from reranker.service.errors import InvalidArgument
from reranker.service.images import CallImage


@dataclass(frozen=True)
class RankedDocument:
    index: int
    score: float
    text: str | None
    # The document's image as it was sent, when documents are returned and it had one.
    image: CallImage | None = None


def validate_rank_request(
    query: str,
    documents: Sequence[str],
    top_k: int | None,
    query_image: bool = False,
    document_images: Sequence[bool] = (),
) -> None:
    """Raises :class:`InvalidArgument` naming the first offending field. A query or document
    with an image may have no text."""
    if not query.strip() and not query_image:
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
    if top_k is not None and top_k < 1:
        raise InvalidArgument(f"top_k must be >= 1 when set, got {top_k}")


@dataclass(frozen=True)
class ChunkingChoice:
    overlap: int
    max_chunks: int


def resolve_options(
    refuse: bool,
    max_document_tokens: int,
    chunking: ChunkingChoice | None,
    chunk_limit: int,
) -> TruncationOptions:
    """Validates the truncation and chunking options of a request."""
    if chunking is not None:
        if refuse:
            raise InvalidArgument("truncation REFUSE and chunking exclude each other")
        if not 1 <= chunking.max_chunks <= chunk_limit:
            raise InvalidArgument(
                f"chunking.max_chunks must be between 1 and {chunk_limit}, "
                f"got {chunking.max_chunks}"
            )
    return TruncationOptions(max_document_tokens=max_document_tokens, refuse=refuse)


def plan_requests(documents: Sequence[str], max_rows: int) -> list[list[int]]:
    """Splits document indices into inference requests of at most ``max_rows`` rows.

    Rows are ordered by length first, so each request holds documents of similar length
    and little padding is computed; requests are balanced in size so they finish together.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(documents)), key=lambda i: len(documents[i]))
    count = math.ceil(len(order) / max_rows)
    if count == 0:
        return []
    size, extra = divmod(len(order), count)
    requests: list[list[int]] = []
    start = 0
    for n in range(count):
        end = start + size + (1 if n < extra else 0)
        requests.append(order[start:end])
        start = end
    return requests


def activate(raw: np.ndarray, activation: Activation, raw_scores: bool) -> np.ndarray:
    """Applies the model's activation to its raw outputs unless raw scores were asked for."""
    values = raw.astype(np.float64)
    if raw_scores or activation is Activation.NONE:
        return values
    return 1.0 / (1.0 + np.exp(-values))


def assemble(
    scores: np.ndarray,
    documents: Sequence[str],
    top_k: int | None,
    return_documents: bool,
    images: Sequence[CallImage | None] = (),
) -> list[RankedDocument]:
    """Orders documents best first (ties keep input order) and keeps the best ``top_k``."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    if top_k is not None:
        order = order[:top_k]
    return [
        RankedDocument(
            index=i,
            score=float(scores[i]),
            text=documents[i] if return_documents else None,
            image=images[i] if return_documents and images else None,
        )
        for i in order
    ]
