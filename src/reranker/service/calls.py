"""A rank call in no transport's shape: what every door converts its request into."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from reranker.service.images import CallImage
from reranker.service.scoring import RowImages

# Priorities a call may take: 0, the default, is the most urgent.
MAX_PRIORITY = 9


class Truncation(StrEnum):
    # Drop tokens from the longer of query and document until the pair fits.
    LONGEST_FIRST = "longest_first"
    # Refuse a pair that does not fit, naming the document.
    REFUSE = "refuse"


@dataclass(frozen=True)
class ChunkingRequest:
    """A caller's chunking options; unset fields take the server's defaults."""

    overlap_tokens: int | None = None
    # 0 takes the server's limit.
    max_chunks: int = 0


@dataclass(frozen=True)
class RankCall:
    """One rank call, in no transport's shape."""

    query: str
    documents: Sequence[str]
    model: str = ""
    top_k: int | None = None
    return_documents: bool = False
    raw_scores: bool = False
    truncation: Truncation = Truncation.LONGEST_FIRST
    max_document_tokens: int = 0
    chunking: ChunkingRequest | None = None
    # None: the model's default instruction (for a model that takes one).
    instruction: str | None = None
    # Asked to truncate from the left (TEI's option): refused, naming the option.
    truncate_left: bool = False
    # The query's image, for a model that takes images (the query text may then be empty).
    query_image: CallImage | None = None
    # Empty, or one entry per document: its image, or None (its text may then be empty).
    document_images: Sequence[CallImage | None] = ()
    # 0 (most urgent) to MAX_PRIORITY; None takes the caller's default.
    priority: int | None = None

    @property
    def images(self) -> RowImages | None:
        if self.query_image is None and not any(self.document_images):
            return None
        return RowImages(
            query=self.query_image.data if self.query_image is not None else b"",
            documents=[image.data if image is not None else b"" for image in self.document_images]
            or [b""] * len(self.documents),
        )
