"""Limits of one call and of the whole server: what a caller may send, and how much
work may be in flight before new calls are turned away."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from reranker.backend.images import ImageLimits
from reranker.service.callers import Caller
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


# How much less of the row budget each priority level below 0 may find taken and still be
# admitted: a call of priority p is refused once the rows in flight pass (100 - p x this)
# percent of the limit, so as the budget fills the least urgent calls are refused first (priority 9
# past 55%), and the most urgent find room longest.
PRIORITY_RESERVE_PERCENT = 5


class RowBudget:
    """Counts the rows being scored; a call that would go over the limit is refused at
    once (RESOURCE_EXHAUSTED) rather than queued, so overload cannot build an unbounded
    backlog and admitted calls keep a bounded latency. A less urgent call is refused once
    the rows in flight pass its priority's share (:data:`PRIORITY_RESERVE_PERCENT`), however
    small it is; on a server with room, a call of any priority runs.

    Used from one event loop only: no lock is needed.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.in_flight = 0

    @contextmanager
    def hold(self, rows: int, priority: int = 0) -> Iterator[None]:
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
        share_percent = 100 - PRIORITY_RESERVE_PERCENT * priority
        # Whole percentages: a float share (1 - 0.05 x 7 = 0.6499...) would move the line.
        if self.in_flight * 100 > share_percent * self.limit:
            raise ResourceExhausted(
                f"server busy for priority {priority}: {self.in_flight} rows in flight, past "
                f"the {share_percent}% of max_rows_in_flight={self.limit} that priority {priority} "
                "calls are admitted within; retry with backoff or a more urgent priority"
            )
        self.in_flight += rows
        try:
            yield
        finally:
            self.in_flight -= rows


class TeamQuotas:
    """Each team's rows being scored, held to its quota (``max_rows_in_flight`` in the key
    file): a team over it is refused (RESOURCE_EXHAUSTED) and no other team is affected.

    Used from one event loop only: no lock is needed.
    """

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}

    @contextmanager
    def hold(self, caller: Caller, rows: int) -> Iterator[None]:
        quota = caller.max_rows_in_flight
        if quota is None:
            yield
            return
        team, used = caller.team, self.in_flight.get(caller.team, 0)
        if rows > quota:
            raise InvalidArgument(
                f"this call needs {rows} rows (documents x chunks); team {team!r} may have "
                f"at most {quota} in flight (its max_rows_in_flight)"
            )
        if used + rows > quota:
            raise ResourceExhausted(
                f"team {team!r} is at its quota: {used} rows in flight, this call needs "
                f"{rows}, its max_rows_in_flight={quota}; retry with backoff"
            )
        self.in_flight[team] = used + rows
        try:
            yield
        finally:
            self.in_flight[team] -= rows
