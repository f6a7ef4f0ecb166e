"""The dispatcher's order of admission, judged on order alone: requests hold their place until
the test lets them finish, one at a time."""

from __future__ import annotations

import asyncio

import pytest

from reranker.service.dispatch import Dispatcher


class Requests:
    """Requests that enter the window, record their admission, and finish when released."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.admitted: list[str] = []
        self._finish: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def send(self, name: str, call: str, priority: int = 0, model: str = "m") -> None:
        async def request() -> None:
            async with self.dispatcher.slot(model, call, priority):
                self.admitted.append(name)
                await self._finish[name].wait()

        self._finish[name] = asyncio.Event()
        self.tasks[name] = asyncio.create_task(request())

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    async def finish(self, name: str) -> None:
        assert name in self.admitted, f"{name} is not admitted: {self.admitted}"
        self._finish[name].set()
        await self.tasks[name]
        await self.settle()


async def test_a_call_arriving_behind_a_large_one_is_admitted_next() -> None:
    requests = Requests(Dispatcher(window=2))
    for i in range(6):
        requests.send(f"large{i}", "large")
    await requests.settle()
    requests.send("small0", "small")
    requests.send("small1", "small")
    await requests.settle()
    assert requests.admitted == ["large0", "large1"]
    await requests.finish("large0")
    assert requests.admitted[-1] == "small0"
    await requests.finish("large1")
    # The small call has still had fewer places than the large one: its second goes next.
    assert requests.admitted[-1] == "small1"
    await requests.finish("small0")
    await requests.finish("small1")
    for i in range(2, 6):
        await requests.finish(f"large{i}")
    assert requests.admitted == [
        "large0",
        "large1",
        "small0",
        "small1",
        "large2",
        "large3",
        "large4",
        "large5",
    ]


async def test_calls_take_turns_in_the_order_they_came() -> None:
    requests = Requests(Dispatcher(window=1))
    for call in ("a", "b", "c"):
        for i in range(2):
            requests.send(f"{call}{i}", call)
    await requests.settle()
    for name in ("a0", "b0", "c0", "a1", "b1"):
        await requests.finish(name)
    await requests.finish("c1")
    assert requests.admitted == ["a0", "b0", "c0", "a1", "b1", "c1"]


async def test_a_more_urgent_priority_overtakes_every_waiting_request_of_a_less_urgent_one() -> (
    None
):
    requests = Requests(Dispatcher(window=1))
    requests.send("low0", "low", priority=5)
    requests.send("low1", "low", priority=5)
    requests.send("mid0", "mid", priority=3)
    requests.send("high0", "high", priority=0)
    await requests.settle()
    for name in ("low0", "high0", "mid0", "low1"):
        await requests.finish(name)
    assert requests.admitted == ["low0", "high0", "mid0", "low1"]


async def test_models_have_windows_of_their_own() -> None:
    requests = Requests(Dispatcher(window=1))
    requests.send("a", "x", model="one")
    requests.send("b", "y", model="two")
    await requests.settle()
    assert requests.admitted == ["a", "b"]
    await requests.finish("a")
    await requests.finish("b")


async def test_a_cancelled_waiter_gives_up_its_turn_and_the_window_stays_whole() -> None:
    dispatcher = Dispatcher(window=1)
    requests = Requests(dispatcher)
    requests.send("first", "a")
    requests.send("cancelled", "b")
    requests.send("next", "c")
    await requests.settle()
    requests.tasks["cancelled"].cancel()
    await requests.settle()
    await requests.finish("first")
    assert requests.admitted == ["first", "next"]
    assert dispatcher.in_flight("m") == 1
    await requests.finish("next")
    assert dispatcher.in_flight("m") == 0
    with pytest.raises(asyncio.CancelledError):
        await requests.tasks["cancelled"]


async def test_a_request_that_fails_frees_its_place() -> None:
    dispatcher = Dispatcher(window=1)
    with pytest.raises(RuntimeError):
        async with dispatcher.slot("m", "a", 0):
            raise RuntimeError("inference failed")
    assert dispatcher.in_flight("m") == 0
    async with dispatcher.slot("m", "b", 0):
        assert dispatcher.in_flight("m") == 1


def test_the_window_must_hold_a_request() -> None:
    with pytest.raises(ValueError, match="window must be >= 1"):
        Dispatcher(window=0)
