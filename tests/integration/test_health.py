"""Health checks against a real Triton: canaries while idle, none queued behind live traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from reranker.service.engine import TritonEngine
from reranker.service.health import HealthMonitor
from reranker.service.metrics import ServiceMetrics
from reranker.service.scoring import Scores
from tests.integration.conftest import Server

INTERVAL_S = 1.0  # well above one round of calls over every test model (nine, two on PyTorch)


class CanaryCountingEngine(TritonEngine):
    """The real engine; counts the health monitor's canary requests as they pass."""

    canaries = 0

    async def score(
        self, model: Any, query: str, documents: Sequence[str], *args: Any, **kwargs: Any
    ) -> Scores:
        if query == "canary":
            self.canaries += 1
        return await super().score(model, query, documents, *args, **kwargs)


async def canaries_reach(engine: CanaryCountingEngine, count: int, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while engine.canaries < count and time.monotonic() < deadline:
        await asyncio.sleep(INTERVAL_S / 4)
    return engine.canaries >= count


async def test_canaries_only_while_no_traffic_answers(server: Server) -> None:
    engine = CanaryCountingEngine(server.triton_grpc, 64)
    monitor = HealthMonitor(engine, INTERVAL_S, ServiceMetrics())
    monitor.start()
    try:
        await asyncio.wait_for(monitor.serving.wait(), 60)
        models = list(engine.models.values())
        # A round of canaries over every model can take longer than the interval on a busy
        # machine, so wait for rounds by count, with a generous deadline.
        assert await canaries_reach(engine, 3 * len(models)), "idle models are checked"

        # Live traffic for ten intervals: every model answers, so no canary joins its queue.
        await asyncio.gather(
            *(engine.score(m, "where do rivers go", ["the sea"], 30) for m in models)
        )
        engine.canaries = 0
        stop = time.monotonic() + 10 * INTERVAL_S
        while time.monotonic() < stop:
            await asyncio.gather(
                *(engine.score(m, "where do rivers go", ["the sea"], 30) for m in models)
            )
        assert engine.canaries == 0
        assert monitor.serving.is_set()

        # Traffic stops (the count was reset before it): canaries resume.
        assert await canaries_reach(engine, len(models))
    finally:
        await monitor.stop()
        await engine.close()


async def test_a_call_that_found_a_model_dead_is_reported_for_restart_once_without_a_canary(
    server: Server,
) -> None:
    engine = CanaryCountingEngine(server.triton_grpc, 64)
    restarted: list[str] = []

    async def on_dead_model(model: Any) -> None:
        restarted.append(model.name)

    monitor = HealthMonitor(engine, 60.0, ServiceMetrics(), on_dead_model)
    assert await monitor.check()
    model = next(iter(engine.models))
    engine.canaries = 0
    engine.health.failed(model, process_dead_since=time.monotonic())

    assert not await monitor.check()
    assert restarted == [model]
    assert engine.canaries == 0, "the call's finding is proof enough"

    # The same finding predates the restart: the model is probed again, and answers.
    assert await monitor.check()
    assert restarted == [model]
    assert engine.canaries >= 1
