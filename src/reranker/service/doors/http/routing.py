"""What every dialect's routes share: the dialect record the app mounts, the call's deadline
(the gate sets it), and scoring a request of any shape through the one core."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast

from fastapi import APIRouter, Request, Response

from reranker.service.core import RankCore, RankOutcome
from reranker.service.doors.http.errors import ErrorShape, documented
from reranker.service.doors.http.fields import RankShape
from reranker.service.metrics import ServiceMetrics

IGNORED_HEADER = "x-ignored-fields"

# The monotonic time the current call's deadline falls at (None: no deadline).
_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


@dataclass(frozen=True)
class Dialect:
    """One HTTP dialect: its routes, and the error body its clients read on them."""

    error_shape: ErrorShape
    router: APIRouter = field(default_factory=APIRouter)

    def rank_route(self, path: str, *tags: str, description: str | None = None) -> Any:
        """The decorator of a rank route: unset fields left out of its answers, and its error
        answers documented in the dialect's shape."""
        return self.router.post(
            path,
            tags=list(tags),
            response_model_exclude_none=True,
            responses=documented(self.error_shape),
            description=description,
        )


@contextlib.contextmanager
def deadline_in(seconds: float) -> Iterator[None]:
    """The calls made within the block end within ``seconds``."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def core_of(request: Request) -> RankCore:
    return cast(RankCore, request.app.state.core)


def _header_safe(name: str) -> str:
    """A field name as an ASCII header value (a name may hold any character JSON can)."""
    return ascii(name)[1:-1].replace(",", "\\x2c")


async def rank(
    request: Request, body: RankShape, response: Response, label: str = ""
) -> RankOutcome:
    """Scores a request of any shape within the call's deadline; names the fields it did not
    act on (the header) and counts those no vendor documents, per route (``label`` names
    routes that count as one)."""
    core = core_of(request)
    ignored, unknown = body.ignored(), body.unknown()
    if ignored:
        response.headers[IGNORED_HEADER] = ",".join(map(_header_safe, ignored))
    if unknown:
        metrics = cast(ServiceMetrics, request.app.state.metrics)
        metrics.ignored_fields.labels(label or request.scope["route"].path).inc(len(unknown))
    deadline = _deadline.get()
    remaining = core.timeout(None if deadline is None else deadline - time.monotonic())
    outcome: RankOutcome = await core.rank(body.call(), remaining)
    return outcome
