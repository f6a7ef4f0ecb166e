"""The model catalog: every model of the repository is callable by name, and only the pinned
ones and those called recently are resident.

A call for a model that is not loaded loads it, and the calls that arrive meanwhile wait on
that one load (single flight) for at most ``load_timeout_s``, then get UNAVAILABLE with a
retry hint. Loads run one at a time, so the ``max_loaded`` bound holds: past it, the least
recently used model that is neither pinned nor under a call is unloaded first; while every
loaded model is pinned or busy, the load waits for a call to end. A failed load is reported
to its callers and tried again only after ``retry_after_failure_s``.

What is loaded is the engine's word (``engine.models``, refreshed after each load and
unload and by the health monitor), so a restarted Triton, which loads the pinned models
alone, is seen as it is."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from reranker.contract.model import ServedModel
from reranker.service.errors import (
    FailedPrecondition,
    ModelLoadFailed,
    ModelLoading,
    RerankError,
)
from reranker.service.metrics import ServiceMetrics
from reranker.service.scoring import Engine
from reranker.settings import Settings

log = logging.getLogger(__name__)

# How long an unloaded model's processes may take to exit and give their memory back.
RELEASE_WAIT_S = 5.0

# What ``--pin`` takes for "every model in the repository, all resident".
PIN_ALL = "*"


class ModelState(enum.StrEnum):
    LOADED = "loaded"
    LOADING = "loading"
    UNLOADED = "unloaded"
    FAILED = "failed"


def parse_pins(pin: str, default_model: str) -> frozenset[str]:
    """The pinned models of a ``--pin`` value (comma-separated names, or ``*``), the default
    model always among them."""
    names = {name.strip() for name in pin.split(",") if name.strip()}
    if default_model:
        names.add(default_model)
    return frozenset(names)


@dataclass
class _Entry:
    calls: int = 0
    last_used: float = -math.inf
    loading: asyncio.Task[ServedModel] | None = None
    failed_at: float | None = None
    failure: str = ""
    unloading: bool = False


@dataclass(frozen=True)
class Residency:
    """Which models stay loaded, and how many or how much may be."""

    pinned: frozenset[str] = frozenset()
    # 0: no bound.
    max_loaded: int = 0
    memory_budget_bytes: int = 0
    # Reads the resident memory the budget bounds (None: unknown, the budget is not kept).
    resident_bytes: Callable[[], int] | None = None
    load_timeout_s: float = 120.0
    retry_after_failure_s: float = 30.0
    # Whether models whose folder left the repository are unloaded: for a Triton launched
    # here only. Behind ``triton_url`` (replicas, answering in turn) one restarting replica's
    # index would make another's models look removed.
    follow_repository: bool = False

    @classmethod
    def from_settings(
        cls, settings: Settings, resident_bytes: Callable[[], int] | None = None
    ) -> Residency:
        return cls(
            parse_pins(settings.pin, settings.default_model),
            settings.max_loaded_models,
            settings.memory_budget_mb << 20,
            resident_bytes,
            settings.model_load_timeout_s,
            settings.model_load_retry_s,
            follow_repository=not settings.triton_url,
        )


class ModelCatalog:
    def __init__(
        self,
        engine: Engine,
        metrics: ServiceMetrics,
        residency: Residency = Residency(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pin_all = PIN_ALL in residency.pinned
        self.pinned = residency.pinned - {PIN_ALL}
        self._engine = engine
        self._metrics = metrics
        self._residency = residency
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._seen_loaded: set[str] = set()
        # The memory each model added when it loaded, to know what a load will need.
        self._sizes: dict[str, int] = {}
        # One load or unload at a time: the bound is checked and kept in one step.
        self._loading = asyncio.Lock()
        self._call_ended = asyncio.Condition()
        metrics.models_loaded.set_function(lambda: float(len(engine.models)))

    def _entry(self, name: str) -> _Entry:
        return self._entries.setdefault(name, _Entry())

    def is_pinned(self, name: str) -> bool:
        return self.pin_all or name in self.pinned

    def state(self, name: str) -> ModelState:
        entry = self._entries.get(name)
        if name in self._engine.models:
            return ModelState.LOADED
        if entry is not None and entry.loading is not None:
            return ModelState.LOADING
        if entry is not None and entry.failed_at is not None:
            return ModelState.FAILED
        return ModelState.UNLOADED

    async def states(self) -> dict[str, ModelState]:
        """Every model of the repository (and any loaded beside it) with its state."""
        names = set(await self._engine.repository_models()) | set(self._engine.models)
        return {name: self.state(name) for name in sorted(names)}

    async def sweep(self) -> None:
        """Unloads the loaded models whose folder left the repository (once no call holds
        them), so they leave the catalog. Triton's index stops listing such a model although
        it is still loaded, so the models seen loaded before are remembered here."""
        self._seen_loaded |= set(self._engine.models)
        present = set(await self._engine.repository_models())
        for name in sorted(self._seen_loaded - present):
            async with self._loading:
                entry = self._entry(name)
                if entry.calls:
                    continue
                entry.unloading = True
                await self._unload(name, "removed", "removed from the repository")

    async def restore_replicas(self) -> None:
        """Loads the resident models onto a replica that lacks them (back from a restart),
        between the catalog's own loads and unloads."""
        async with self._loading:
            await self._engine.restore_replicas()

    async def watch(self, interval_s: float) -> None:
        """Every ``interval_s`` until cancelled: sweeps where it follows the repository, and
        restores the resident models on replicas that lack them; a failure is retried
        then."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self._residency.follow_repository:
                    await self.sweep()
                await self.restore_replicas()
            except Exception:  # logged; the next interval tries again
                log.exception("catalog sweep failed")

    @contextlib.asynccontextmanager
    async def use(self, name: str, timeout_s: float) -> AsyncIterator[ServedModel]:
        """The model ``name``, loaded if it was not, held resident until the block ends."""
        entry = self._entry(name)
        entry.calls += 1
        try:
            model = await self._loaded(name, entry, min(timeout_s, self._residency.load_timeout_s))
            entry.last_used = self._clock()
            yield model
        finally:
            entry.calls -= 1
            entry.last_used = self._clock()
            async with self._call_ended:
                self._call_ended.notify_all()

    async def _loaded(self, name: str, entry: _Entry, timeout_s: float) -> ServedModel:
        model = self._engine.models.get(name)
        if model is not None and not entry.unloading:
            return model
        if entry.loading is None:
            if entry.failed_at is not None:
                since = self._clock() - entry.failed_at
                if since < self._residency.retry_after_failure_s:
                    error = ModelLoadFailed(
                        f"{entry.failure} (tried {since:.0f}s ago; tried again "
                        f"{self._residency.retry_after_failure_s:.0f}s after a failure)"
                    )
                    error.retry_after_s = max(
                        1, math.ceil(self._residency.retry_after_failure_s - since)
                    )
                    raise error
            entry.loading = asyncio.create_task(self._load(name, entry))
        started = self._clock()
        try:
            # Shielded: a caller that gives up leaves the load running for the others.
            return await asyncio.wait_for(asyncio.shield(entry.loading), timeout_s)
        except TimeoutError:
            raise ModelLoading(
                f"model {name!r} is still loading after {timeout_s:.0f}s; retry shortly"
            ) from None
        finally:
            self._metrics.model_load_wait_seconds.observe(self._clock() - started)

    async def _load(self, name: str, entry: _Entry) -> ServedModel:
        try:
            async with self._loading:
                await self._make_room(name)
                started, before = self._clock(), self._resident()
                await self._engine.load(name)
                if before is not None:
                    self._sizes[name] = max(0, (self._resident() or 0) - before)
                model = self._engine.models.get(name)
                if model is None:
                    # Not one of ours (or its parameters cannot be read): not left resident
                    # outside the bounds, which count served models only.
                    await self._engine.unload(name)
                    raise ModelLoadFailed(f"model {name!r} loaded but is not a served model")
                seconds = self._clock() - started
            self._seen_loaded.add(name)
            self._metrics.model_loads.labels(name, "loaded").inc()
            self._metrics.model_load_seconds.observe(seconds)
            log.info("loaded model %s in %.1fs (reason: first call)", name, seconds)
            entry.failed_at = None
            return model
        except RerankError as error:
            # Only the model's own failure is remembered: an unreachable Triton (restarting)
            # or a full bound may be over at the next call.
            if isinstance(error, ModelLoadFailed):
                entry.failed_at, entry.failure = self._clock(), str(error)
            self._metrics.model_loads.labels(name, "failed").inc()
            log.error("model %s failed to load: %s", name, error)
            raise
        finally:
            entry.loading = None

    async def _make_room(self, name: str) -> None:
        """Unloads least recently used models until ``name`` fits the bounds, waiting for
        calls to end while every other loaded model is busy or pinned."""
        while self._short_of_room(name):
            # Chosen and marked with no await between, so no call starts on the victim
            # unseen; a call that comes for it while it unloads loads it again after.
            async with self._call_ended:
                victim = self._least_recently_used(besides=name)
                if victim is None:
                    if all(self.is_pinned(m) for m in self._engine.models if m != name):
                        raise FailedPrecondition(
                            f"model {name!r} does not fit ({self._bounds()}) beside the "
                            "pinned models, and only unpinned models are unloaded"
                        )
                    # Woken by a call's end, or after a second: room may come otherwise too
                    # (a restarted Triton, memory given back).
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._call_ended.wait(), 1.0)
                    continue
                self._entry(victim).unloading = True
            await self._unload(victim, "budget", f"budget, to load {name}")

    async def _unload(self, name: str, reason: str, why: str) -> None:
        """Unloads ``name`` (marked unloading by the caller, with no await since it was
        chosen), then waits for its processes to give their memory back, since the next
        load may need it."""
        before = self._resident()
        try:
            await self._engine.unload(name)
        finally:
            self._entry(name).unloading = False
        if before is not None:
            await self._released(name, before)
        self._seen_loaded.discard(name)
        self._metrics.model_unloads.labels(name, reason).inc()
        log.info("unloaded model %s (reason: %s)", name, why)

    def _resident(self) -> int | None:
        """The resident memory now, where it can be read (a launched Triton)."""
        read = self._residency.resident_bytes
        return None if read is None else read()

    async def _released(self, victim: str, before: int) -> None:
        """Waits (5 s at most) for an unloaded model's processes to exit, which Triton does
        not wait for: until the resident memory has fallen by 90% of what the model added
        when it loaded (16 MB where that is not known). Without the wait, the next model
        loads beside processes still exiting, and a run of cold calls holds several such
        models over either bound."""
        target = before - max(self._expected_size(victim) * 9 // 10, 16 << 20)
        deadline = self._clock() + RELEASE_WAIT_S
        while (self._resident() or 0) > target and self._clock() < deadline:
            await asyncio.sleep(0.1)

    def _expected_size(self, name: str) -> int:
        """What loading ``name`` adds: as it did before, else the mean of the others."""
        sizes = self._sizes
        return sizes.get(name, sum(sizes.values()) // len(sizes) if sizes else 0)

    def _short_of_room(self, name: str) -> bool:
        bound = self._residency
        if bound.max_loaded and len(self._engine.models) >= bound.max_loaded:
            return True
        resident = self._resident() if bound.memory_budget_bytes else None
        if resident is None:
            return False
        return resident + self._expected_size(name) > bound.memory_budget_bytes

    def _bounds(self) -> str:
        bound = self._residency
        parts = [f"max_loaded_models={bound.max_loaded}"] if bound.max_loaded else []
        if bound.memory_budget_bytes:
            parts.append(f"memory_budget_mb={bound.memory_budget_bytes >> 20}")
        return ", ".join(parts)

    def _least_recently_used(self, besides: str) -> str | None:
        idle = [
            name
            for name in self._engine.models
            if name != besides and not self.is_pinned(name) and self._entry(name).calls == 0
        ]
        return min(idle, key=lambda name: self._entry(name).last_used) if idle else None
