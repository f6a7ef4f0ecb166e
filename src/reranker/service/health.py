"""Whether the service can serve, decided in one place: what calls learn about the backend,
the canary, the dead-model policy, readiness as every door reports it, and the restart of a
Triton this process launched.

Triton's own readiness flag can lie after a Python-backend stub dies (the model stays
"ready" while every request fails), and Triton does not restart a dead stub; unloading such
a model hangs once a request has reached it. So readiness is proven by answers (live calls,
else a canary), and a model found dead gets its Triton restarted when this process owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from reranker.contract.model import ServedModel
from reranker.service.errors import ModelRestarting, RerankError
from reranker.service.metrics import ServiceMetrics

if TYPE_CHECKING:
    from reranker.service.triton_server import TritonServer

log = logging.getLogger(__name__)

CANARY_TIMEOUT_S = 10.0
_RESTART_BACKOFF_S = 1.0
_MAX_RESTART_BACKOFF_S = 30.0

# Told each change of readiness: True when serving.
ReadinessListener = Callable[[bool], Awaitable[None]]


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


class CheckedEngine(Protocol):
    """What the monitor needs of the engine (:class:`reranker.service.engine.TritonEngine`)."""

    @property
    def health(self) -> BackendHealth: ...

    async def refresh(self) -> Mapping[str, ServedModel]: ...

    async def score(
        self, model: ServedModel, query: str, documents: Sequence[str], timeout_s: float
    ) -> object: ...


class HealthMonitor:
    """Readiness of the service: SERVING only while every served model answers, live calls or,
    for a model that had none within the interval, a canary request. Checks run every
    ``interval_s``, and at once when a call meets a failing backend. Doors read
    :attr:`serving` or subscribe with :meth:`on_change`.

    A model found dead is reported to ``on_dead_model`` (:meth:`TritonSupervisor.model_died`
    for a launched Triton), so the service heals by itself.
    """

    def __init__(
        self,
        engine: CheckedEngine,
        interval_s: float,
        metrics: ServiceMetrics,
        on_dead_model: Callable[[ServedModel], Awaitable[None]] | None = None,
    ) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._metrics = metrics
        self._on_dead_model = on_dead_model
        self._listeners: list[ReadinessListener] = []
        self._task: asyncio.Task[None] | None = None
        self._restarted_at = -math.inf
        self.serving = asyncio.Event()

    def on_change(self, listener: ReadinessListener) -> None:
        """Calls ``listener`` with every readiness the monitor sets (NOT_SERVING until then)."""
        self._listeners.append(listener)

    async def check(self) -> bool:
        try:
            models = await self._engine.refresh()
            for model in models.values():
                if not await self._alive(model):
                    if self._on_dead_model is not None:
                        self._restarted_at = time.monotonic()
                        await self._on_dead_model(model)
                    return False
        except RerankError as error:
            log.warning("engine not ready: %s", error)
            return False
        return bool(models)

    async def _alive(self, model: ServedModel) -> bool:
        # A call that found the process dead since the last restart is proof enough: a canary
        # would take Triton another second to fail. Only a Triton this process restarts is
        # judged on that word; any other is probed until it answers again.
        health = self._engine.health
        if self._on_dead_model is not None and health.found_dead_after(
            model.name, self._restarted_at
        ):
            log.error("a call found the process of model %s dead", model.name)
            return False
        if health.answered_within(model.name, self._interval_s):
            return True
        try:
            await self._engine.score(model, "canary", ["canary"], timeout_s=CANARY_TIMEOUT_S)
        except ModelRestarting as error:
            log.error("model %s failed its canary: %s", model.name, error)
            return False
        return True

    async def _set(self, serving: bool) -> None:
        self._metrics.serving.set(1 if serving else 0)
        if serving:
            self.serving.set()
        else:
            self.serving.clear()
        for listener in self._listeners:
            await listener(serving)

    async def _run(self) -> None:
        while True:
            await self._set(await self.check())
            await self._engine.health.wait_for_trouble(self._interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._set(False)


class TritonSupervisor:
    """Keeps a Triton this process launched running: restarts it when it exits by itself, and
    kills it (so it is restarted) when one of its model processes died. Meanwhile calls fail
    fast with UNAVAILABLE; the engine's channel reconnects once Triton is back."""

    def __init__(self, triton: TritonServer, metrics: ServiceMetrics, poll_s: float = 0.1) -> None:
        self._triton = triton
        self._metrics = metrics
        self._poll_s = poll_s

    async def model_died(self, model: ServedModel) -> None:
        log.error("a process of model %s died: restarting tritonserver", model.name)
        await asyncio.to_thread(self._triton.kill)  # supervise() starts a new one

    async def supervise(self) -> None:
        triton = self._triton
        backoff = _RESTART_BACKOFF_S
        while True:
            await asyncio.sleep(self._poll_s)
            if triton.running():
                continue
            log.error(
                "tritonserver is not running (exit code %s); restarting it\n%s",
                triton.exit_code(),
                triton.log_tail(10),
            )
            started = time.monotonic()
            try:
                await asyncio.to_thread(triton.restart)
            except (OSError, RuntimeError, TimeoutError) as error:
                log.error("restarting tritonserver failed: %s; next try in %.0fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_RESTART_BACKOFF_S)
                continue
            self._metrics.backend_restarts.inc()
            log.info("tritonserver restarted in %.1fs", time.monotonic() - started)
            backoff = _RESTART_BACKOFF_S
