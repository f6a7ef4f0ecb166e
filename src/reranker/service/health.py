"""Whether the service can serve, decided in one place: the canary, the dead-model policy,
and readiness as every door reports it (the restart of a Triton this process launched is
:class:`reranker.service.triton_server.TritonSupervisor`'s).

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
from collections.abc import Awaitable, Callable

from reranker.contract.model import ServedModel
from reranker.service.errors import ModelNotLoaded, ModelRestarting, RerankError
from reranker.service.metrics import ServiceMetrics
from reranker.service.scoring import Engine, ScoreCall

log = logging.getLogger(__name__)

CANARY_TIMEOUT_S = 10.0

# Told each change of readiness: True when serving.
ReadinessListener = Callable[[bool], Awaitable[None]]


class HealthMonitor:
    """Readiness of the service: SERVING only while every served model answers, live calls or,
    for a model that had none within the interval, a canary request. Checks run every
    ``interval_s``, and at once when a call meets a failing backend. Doors read
    :attr:`serving` or subscribe with :meth:`on_change`.

    A model found dead is reported to ``on_dead_model`` (``TritonSupervisor.model_died`` in
    :mod:`reranker.service.triton_server`, for a launched Triton), so the service heals by
    itself.
    """

    def __init__(
        self,
        engine: Engine,
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
            for model in list(models.values()):
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
            await self._engine.score(ScoreCall(model, "canary", ["canary"], CANARY_TIMEOUT_S))
        except ModelRestarting as error:
            log.error("model %s failed its canary: %s", model.name, error)
            return False
        except ModelNotLoaded:
            # The catalog may have unloaded it since the refresh: only a model still listed
            # as loaded is failing.
            return model.name not in await self._engine.refresh()
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
