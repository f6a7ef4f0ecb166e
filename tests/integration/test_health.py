"""Health checks against a real Triton: canaries while idle, none queued behind live traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from reranker.service.engine import TritonEngine
from reranker.service.health import HealthMonitor
from reranker.service.metrics import ServiceMetrics
from reranker.service.scoring import ScoreCall, Scores
from reranker.settings import Settings
from tests.integration.conftest import Server

# The health interval: at least this, and at least ROUNDS_PER_INTERVAL of the slowest round
# of calls over every test model measured before the check (a round's time follows the CPU's
# speed and load; in a lockstep round a model can go two rounds without an answer).
INTERVAL_S = 1.0
# The served default: the engine sends each model this many requests at once.
WINDOW = Settings().requests_in_flight_per_model
ROUNDS_PER_INTERVAL = 5


class CanaryCountingEngine(TritonEngine):
    """The real engine; counts the health monitor's canary requests as they pass."""

    canaries = 0

    async def score(self, call: ScoreCall) -> Scores:
        if call.query == "canary":
            self.canaries += 1
        return await super().score(call)


async def canaries_reach(
    engine: CanaryCountingEngine, count: int, interval_s: float = INTERVAL_S
) -> bool:
    deadline = time.monotonic() + max(30.0, 6 * interval_s)
    while engine.canaries < count and time.monotonic() < deadline:
        await asyncio.sleep(interval_s / 4)
    return engine.canaries >= count


async def a_round(engine: CanaryCountingEngine, models: Sequence[Any]) -> float:
    """One call to every model at once; its time."""
    started = time.monotonic()
    calls = [ScoreCall(m, "where do rivers go", ["the sea"], 30) for m in models]
    await asyncio.gather(*(engine.score(call) for call in calls))
    return time.monotonic() - started


async def test_canaries_only_while_no_traffic_answers(server: Server) -> None:
    engine = CanaryCountingEngine(server.triton_grpc, 64, WINDOW)
    models = list((await engine.refresh()).values())
    slowest = max([await a_round(engine, models) for _ in range(3)])
    interval_s = max(INTERVAL_S, ROUNDS_PER_INTERVAL * slowest)
    print(f"slowest round {slowest:.2f} s: interval {interval_s:.2f} s")
    monitor = HealthMonitor(engine, interval_s, ServiceMetrics())
    monitor.start()
    try:
        await asyncio.wait_for(monitor.serving.wait(), 60)
        # A round of canaries over every model can take longer than the interval on a busy
        # machine, so wait for rounds by count, with a generous deadline: two rounds, so the
        # idle models are checked again, not once.
        assert await canaries_reach(engine, 2 * len(models), interval_s), "idle models checked"

        # Live traffic for three intervals (idle, each would bring a round of canaries): every
        # model answers, so no canary joins its queue.
        await a_round(engine, models)
        engine.canaries = 0
        stop = time.monotonic() + 3 * interval_s
        while time.monotonic() < stop:
            await a_round(engine, models)
        assert engine.canaries == 0
        assert monitor.serving.is_set()

        # Traffic stops (the count was reset before it): canaries resume.
        assert await canaries_reach(engine, len(models), interval_s)
    finally:
        await monitor.stop()
        await engine.close()


async def test_a_call_that_found_a_model_dead_is_reported_for_restart_once_without_a_canary(
    server: Server,
) -> None:
    engine = CanaryCountingEngine(server.triton_grpc, 64, WINDOW)
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
