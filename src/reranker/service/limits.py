"""Limits of one call and of the whole server: what a caller may send, and how much
work may be in flight before new calls are turned away."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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

    @classmethod
    def from_settings(cls, settings: Settings) -> CallLimits:
        return cls(
            max_documents=settings.max_documents_per_call,
            max_query_bytes=settings.max_query_bytes,
            max_document_bytes=settings.max_document_bytes,
            images=ImageLimits(settings.max_image_bytes, settings.max_image_pixels),
        )

    def check(self, query: str, documents: Sequence[str]) -> None:
        """Raises :class:`InvalidArgument` naming the limit a call exceeds and by what."""
        if len(documents) > self.max_documents:
            raise InvalidArgument(
                f"documents holds {len(documents)} documents; the limit is "
                f"max_documents_per_call={self.max_documents}"
            )
        # A UTF-8 string has at least as many bytes as characters: only long ones are encoded.
        if len(query) * 4 > self.max_query_bytes:
            size = len(query.encode("utf-8"))
            if size > self.max_query_bytes:
                raise InvalidArgument(
                    f"query is {size} bytes; the limit is max_query_bytes={self.max_query_bytes}"
                )
        for index, document in enumerate(documents):
            if len(document) * 4 > self.max_document_bytes:
                size = len(document.encode("utf-8"))
                if size > self.max_document_bytes:
                    raise InvalidArgument(
                        f"documents[{index}] is {size} bytes; the limit is "
                        f"max_document_bytes={self.max_document_bytes}"
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
