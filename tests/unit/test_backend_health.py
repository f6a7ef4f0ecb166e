"""What calls teach the engine about its backend, as the health monitor reads it."""

from __future__ import annotations

import asyncio
import time

from reranker.service.scoring import BackendHealth


async def test_answers_and_failures_as_the_monitor_reads_them() -> None:
    health = BackendHealth()
    assert not health.answered_within("m", 60)
    health.answered("m")
    assert health.answered_within("m", 60) and not health.answered_within("other", 60)
    before = time.monotonic()
    health.failed("m")  # unreachable: no longer proven alive, not found dead
    assert not health.answered_within("m", 60)
    assert not health.found_dead_after("m", before - 1)
    health.failed("m", process_dead_since=time.monotonic())
    assert health.found_dead_after("m", before)
    assert not health.found_dead_after("m", time.monotonic())  # a restart came after it


async def test_trouble_wakes_the_monitor_once() -> None:
    health = BackendHealth()
    started = time.monotonic()
    await health.wait_for_trouble(0.05)  # nothing happened: the interval passes
    assert time.monotonic() - started >= 0.04
    asyncio.get_running_loop().call_later(0.01, health.failed, "m")
    started = time.monotonic()
    await health.wait_for_trouble(30)
    assert time.monotonic() - started < 10
    started = time.monotonic()
    await health.wait_for_trouble(0.05)  # forgotten once seen
    assert time.monotonic() - started >= 0.04
