"""The model catalog's rules, through the core over an in-memory repository: first-call loads
in single flight, the least-recently-used bound, pinned and busy models kept, failures with
a back-off, and the start-up pins. Triton's own loading is tested in
tests/integration/test_catalog.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from reranker.service import errors
from reranker.service.calls import RankCall
from reranker.service.catalog import ModelState, parse_pins
from reranker.service.core import RankCore
from reranker.service.health import HealthMonitor
from reranker.service.metrics import ServiceMetrics
from reranker.service.scoring import ScoreCall, Scores
from reranker.service.triton_server import TritonServer
from reranker.settings import Settings
from tests.unit.test_core import BI, CROSS, FakeScorer


def repository(*names: str) -> dict[str, object]:
    return {name: replace(BI, name=name) for name in names}


def catalog_core(
    *unloaded: str, resident_bytes: Callable[[], int] | None = None, **settings: Any
) -> tuple[RankCore, FakeScorer]:
    """A core over "cross" (the default) and "bi", loaded, and ``unloaded`` models."""
    scorer = FakeScorer(unloaded=repository(*unloaded))  # type: ignore[arg-type]
    config = Settings(**{"default_model": "cross", **settings})
    return RankCore(config, scorer, ServiceMetrics(), resident_bytes=resident_bytes), scorer


async def call(core: RankCore, model: str, timeout_s: float = 5.0) -> str:
    outcome = await core.rank(RankCall("q", ["a doc"], model=model), timeout_s)
    return outcome.model.name


async def test_a_model_not_loaded_loads_on_its_first_call_once_for_many_callers() -> None:
    core, scorer = catalog_core("cold")
    scorer.load_gate = asyncio.Event()
    calls = [asyncio.create_task(call(core, "cold")) for _ in range(8)]
    await asyncio.sleep(0.05)
    assert core.catalog.state("cold") is ModelState.LOADING
    scorer.load_gate.set()
    assert await asyncio.gather(*calls) == ["cold"] * 8
    assert scorer.loads == ["cold"]
    assert core.catalog.state("cold") is ModelState.LOADED


async def test_the_least_recently_used_idle_model_makes_room() -> None:
    core, scorer = catalog_core("c", max_loaded_models=2)  # "cross" (default) and "bi" loaded
    await call(core, "bi")
    await call(core, "c")
    assert scorer.unloads == ["bi"], "cross is pinned as the default"
    await call(core, "bi")
    assert scorer.unloads == ["bi", "c"]
    assert sorted(scorer.served) == ["bi", "cross"]


async def test_no_model_is_unloaded_under_a_call() -> None:
    core, scorer = catalog_core("c", max_loaded_models=2)
    scorer.gate = asyncio.Event()
    busy = asyncio.create_task(call(core, "bi"))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(call(core, "c"))
    await asyncio.sleep(0.1)
    assert scorer.unloads == [] and not waiting.done(), "bi is busy, cross pinned: c waits"
    scorer.gate.set()
    assert await busy == "bi" and await waiting == "c"
    assert scorer.unloads == ["bi"]


async def test_a_pinned_model_is_never_unloaded_and_a_model_that_cannot_fit_is_refused() -> None:
    core, scorer = catalog_core("c", max_loaded_models=2, pin="bi")
    with pytest.raises(errors.FailedPrecondition, match=r"does not fit \(max_loaded_models=2\)"):
        await call(core, "c")
    assert scorer.unloads == [] and scorer.loads == []


async def test_a_call_that_waits_past_its_load_timeout_gets_a_retry_hint() -> None:
    core, scorer = catalog_core("c", max_loaded_models=2, model_load_timeout_s=0.2)
    scorer.gate = asyncio.Event()
    busy = asyncio.create_task(call(core, "bi"))
    await asyncio.sleep(0.05)
    with pytest.raises(errors.ModelLoading, match="still loading after 0s") as refused:
        await call(core, "c")
    assert errors.retry_after(refused.value) == "1"
    scorer.gate.set()
    await busy
    assert await call(core, "c") == "c", "the load went on, and has finished"


async def test_the_memory_budget_unloads_the_least_recent_by_what_each_model_added() -> None:
    mb = 1 << 20
    sizes = {"cross": 80 * mb, "bi": 80 * mb, "c": 80 * mb, "d": 80 * mb}
    core, scorer = catalog_core(
        "c", "d", memory_budget_mb=250, resident_bytes=lambda: sum(sizes[m] for m in loaded())
    )

    def loaded() -> list[str]:
        return list(scorer.served)

    await call(core, "c")  # 160 MB resident; c's size is not known yet: it loads
    assert scorer.unloads == [] and sorted(scorer.served) == ["bi", "c", "cross"]
    await call(core, "d")  # 240 + c's 80 learned > 250: the least recent (bi) goes
    assert scorer.unloads == ["bi"]
    sizes["d"] = 200 * mb  # bigger than learned is not foreseen, but the next load makes room
    await call(core, "bi")
    assert scorer.unloads == ["bi", "c", "d"]


async def test_a_failed_load_is_reported_and_retried_only_after_the_back_off() -> None:
    core, scorer = catalog_core("broken", model_load_retry_s=30)
    with pytest.raises(errors.ModelLoadFailed, match="bad config"):
        await call(core, "broken")
    with pytest.raises(errors.ModelLoadFailed, match="bad config") as again:
        await call(core, "broken")
    assert scorer.loads == ["broken"], "no second load within the back-off"
    assert again.value.retry_after_s is not None and 1 <= again.value.retry_after_s <= 30
    assert core.catalog.state("broken") is ModelState.FAILED
    assert await call(core, "cross") == "cross", "other models are not affected"

    core, scorer = catalog_core("broken", model_load_retry_s=0)
    for _ in range(2):
        with pytest.raises(errors.ModelLoadFailed):
            await call(core, "broken")
    assert scorer.loads == ["broken", "broken"]


async def test_a_model_the_repository_lacks_is_refused_naming_the_catalog() -> None:
    core, _ = catalog_core("cold")
    with pytest.raises(errors.InvalidArgument, match=r"'nope' is not served.*'cold'"):
        await call(core, "nope")
    assert await core.catalog.states() == {
        "bi": ModelState.LOADED,
        "cold": ModelState.UNLOADED,
        "cross": ModelState.LOADED,
    }


async def test_a_model_removed_from_the_repository_is_unloaded_once_no_call_holds_it() -> None:
    core, scorer = catalog_core("c")
    await call(core, "c")
    scorer.gate = asyncio.Event()
    holding = asyncio.create_task(call(core, "c"))
    await asyncio.sleep(0.05)
    scorer.removed.add("c")
    await core.catalog.sweep()
    assert scorer.unloads == [], "a call holds it"
    scorer.gate.set()
    await holding
    await core.catalog.sweep()
    assert scorer.unloads == ["c"]
    assert "c" not in await core.catalog.states()


def test_pins_and_the_models_triton_loads_at_start() -> None:
    assert parse_pins(" a, b ,,", "d") == {"a", "b", "d"}
    assert parse_pins("", "") == frozenset()

    def at_start(**settings: str) -> list[str]:
        return TritonServer(Settings(**settings)).models_at_start()  # type: ignore[arg-type]

    assert at_start(default_model="d") == ["d"]
    assert at_start(default_model="d", pin="b,a") == ["a", "b", "d"]
    assert at_start() == ["*"], "no default and no pin: every model"
    assert at_start(default_model="d", pin="*") == ["*"]
    assert CROSS.name == "cross"


class UnloadedUnderTheCanary(FakeScorer):
    """A canary that finds its model gone: the catalog unloaded it after the refresh, or
    (``unloaded_on_purpose`` false) Triton lost a model it still lists."""

    unloaded_on_purpose = True

    async def score(self, call: ScoreCall) -> Scores:
        name = call.model.name
        if name != "bi":
            return await super().score(call)
        if self.unloaded_on_purpose:
            self.served.pop(name, None)
        raise errors.ModelNotLoaded(f"the model is not loaded: {name}")


async def test_a_canary_for_a_model_unloaded_meanwhile_is_no_failure() -> None:
    scorer = UnloadedUnderTheCanary(served={"cross": CROSS, "bi": BI})
    monitor = HealthMonitor(scorer, 60.0, ServiceMetrics())
    assert await monitor.check()
    scorer.served["bi"] = BI
    scorer.unloaded_on_purpose = False
    assert not await monitor.check(), "a model still listed as loaded fails its canary"


async def test_the_implicit_default_is_the_repository_s_only_model_not_the_only_one_loaded() -> (
    None
):
    scorer = FakeScorer(served={"cross": CROSS}, unloaded=repository("c"))  # type: ignore[arg-type]
    core = RankCore(Settings(default_model=""), scorer, ServiceMetrics())
    with pytest.raises(errors.InvalidArgument, match="model must be set"):
        await core.rank(RankCall("q", ["a doc"]), 5.0)
    alone = FakeScorer(served={"cross": CROSS})
    core = RankCore(Settings(default_model=""), alone, ServiceMetrics())
    assert (await core.rank(RankCall("q", ["a doc"]), 5.0)).model.name == "cross"
