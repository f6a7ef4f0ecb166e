"""The one interface between the rank core and what scores rows (the Triton engine in
production): what the core asks, what the health monitor reads, and what the engine
implements."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from reranker.contract.model import ServedModel
from reranker.contract.tensors import LONGEST_FIRST, TruncationOptions


@dataclass(frozen=True)
class Scores:
    """Raw model outputs, one per document in the caller's order."""

    values: np.ndarray
    requests: int
    inference_time_s: float
    # Tokens the model read over every row (0 from a model that does not count them).
    tokens: int = 0


@dataclass(frozen=True)
class RowImages:
    """A call's images as the engine sends them: the query's and each document's encoded
    bytes (empty: none)."""

    query: bytes
    documents: Sequence[bytes]


@dataclass(frozen=True)
class ScoreCall:
    """What the core asks of the engine: every document scored against the query, the
    scores in the documents' order."""

    model: ServedModel
    query: str
    documents: Sequence[str]
    timeout_s: float
    options: TruncationOptions = LONGEST_FIRST
    # labels[i] is the caller's index of documents[i] (default i), named in errors.
    labels: Sequence[int] | None = None
    # A model that takes images is sent each row's images (empty bytes: none).
    images: RowImages | None = None
    priority: int = 0


class BackendHealth:
    """What calls have learned about the backend's models. The engine records it as calls
    go; :class:`HealthMonitor` reads it to decide when to probe and when to restart."""

    def __init__(self) -> None:
        # Set when a call meets a failing backend, so health checks run now, not later.
        self._trouble = asyncio.Event()
        # Monotonic time of each model's latest answered request: live traffic proves a model
        # alive as well as a canary does, without queueing behind that traffic.
        self._answered: dict[str, float] = {}
        # Monotonic start time of the latest request that found a model's process dead.
        self._found_dead: dict[str, float] = {}

    def answered(self, model: str) -> None:
        self._answered[model] = time.monotonic()

    def failed(self, model: str, process_dead_since: float | None = None) -> None:
        """A request to ``model`` met an unavailable backend (a dead model process, when
        ``process_dead_since`` gives the request's start)."""
        if process_dead_since is not None:
            self._found_dead[model] = process_dead_since
        self._answered.pop(model, None)
        self._trouble.set()

    def answered_within(self, model: str, seconds: float) -> bool:
        answered = self._answered.get(model)
        return answered is not None and time.monotonic() - answered < seconds

    def found_dead_after(self, model: str, moment: float) -> bool:
        """Whether a request that started after ``moment`` found ``model``'s process dead."""
        found = self._found_dead.get(model)
        return found is not None and found > moment

    async def wait_for_trouble(self, timeout_s: float) -> None:
        """Returns when a call meets trouble, or after ``timeout_s``; then forgets it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._trouble.wait(), timeout_s)
        self._trouble.clear()


class Engine(Protocol):
    """What scores rows: :class:`reranker.service.engine.TritonEngine` in production. The
    core scores through it; the health monitor reads what calls learned (``health``),
    refreshes the models and sends canaries through it."""

    @property
    def models(self) -> Mapping[str, ServedModel]: ...

    @property
    def health(self) -> BackendHealth: ...

    async def refresh(self) -> Mapping[str, ServedModel]: ...

    async def repository_models(self) -> list[str]:
        """Every served model the repository holds, loaded or not."""
        ...

    def describe_unloaded(self, name: str) -> ServedModel | None:
        """What ``name`` is, read from the repository, while it is not loaded (None: unknown)."""
        ...

    async def load(self, name: str) -> None:
        """Loads ``name`` (its composing models with it), then refreshes the models."""
        ...

    async def unload(self, name: str) -> None:
        """Unloads ``name`` and the composing models no other loaded model uses."""
        ...

    async def restore_replicas(self) -> list[str]:
        """Loads onto each replica the loaded models it lacks (none behind one Triton)."""
        ...

    async def score(self, call: ScoreCall) -> Scores: ...
