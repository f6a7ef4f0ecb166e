"""Limits of one call and of the whole server: what a caller may send, and how much
work may be in flight before new calls are turned away."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from reranker.backend.images import ImageLimits
from reranker.service.errors import InvalidArgument, ResourceExhausted
from reranker.settings import Settings


@dataclass(frozen=True)
class CallLimits:
    max_documents: int
    max_query_bytes: int
    max_document_bytes: int
    images: ImageLimits
    # Chunking: the overlap a call gets unless it sets one, and the most chunks a document
    # may be scored in (what a call gets unless it asks for fewer).
    chunk_overlap_tokens: int = 0
    max_chunks: int = 1

    @classmethod
    def from_settings(cls, settings: Settings) -> CallLimits:
        return cls(
            max_documents=settings.max_documents_per_call,
            max_query_bytes=settings.max_query_bytes,
            max_document_bytes=settings.max_document_bytes,
            images=ImageLimits(settings.max_image_bytes, settings.max_image_pixels),
            chunk_overlap_tokens=settings.chunk_overlap_tokens,
            max_chunks=settings.max_chunks_per_document,
        )


class RowBudget:
    """Counts the rows being scored; a call that would go over the limit is refused at
    once (RESOURCE_EXHAUSTED) rather than queued, so overload cannot build an unbounded
    backlog and admitted calls keep a bounded latency.

    Used from one event loop only: no lock is needed.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.in_flight = 0

    @contextmanager
    def hold(self, rows: int) -> Iterator[None]:
        if rows > self.limit:
            raise InvalidArgument(
                f"this call needs {rows} rows (documents x chunks); the limit is "
                f"max_rows_in_flight={self.limit}"
            )
        if self.in_flight + rows > self.limit:
            raise ResourceExhausted(
                f"server at capacity: {self.in_flight} rows in flight, this call needs {rows}, "
                f"max_rows_in_flight={self.limit}; retry with backoff"
            )
        self.in_flight += rows
        try:
            yield
        finally:
            self.in_flight -= rows
