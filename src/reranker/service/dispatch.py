"""The order in which calls' inference requests reach Triton.

A call is split into requests of a few rows (:func:`~reranker.service.engine.plan_requests`).
Sent all at once, a large call's requests would fill Triton's queue and a small call arriving
after it would wait for every one of them. Instead each model has a window of requests in
flight at Triton; a request waits for a free place in it, and a freed place goes to the most
urgent priority level waiting (0 first), and within it to the waiting call that has been
given the fewest places so far (the earliest of those): calls take turns, and a call that
arrives while a large one runs is next. A small call so waits only for requests already
inside the window, however large the calls ahead of it, and a call of a higher priority
overtakes every queued request of a lower one.

Used from one event loop only: no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Call:
    priority: int
    arrival: int
    granted: int = 0
    in_flight: int = 0
    waiting: deque[asyncio.Future[None]] = field(default_factory=deque)


class _Lane:
    """One model's window: its requests in flight and the calls they belong to."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.calls: dict[Hashable, _Call] = {}

    def waiters(self) -> list[_Call]:
        for call in self.calls.values():
            while call.waiting and call.waiting[0].done():  # cancelled while waiting
                call.waiting.popleft()
        return [call for call in self.calls.values() if call.waiting]

    def grant(self, call: _Call) -> None:
        call.granted += 1
        call.in_flight += 1
        self.in_flight += 1


class Dispatcher:
    """Admits each model's inference requests to Triton at most ``window`` at a time."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._lanes: dict[str, _Lane] = {}
        self._arrivals = itertools.count()

    def in_flight(self, model: str) -> int:
        lane = self._lanes.get(model)
        return lane.in_flight if lane is not None else 0

    @contextlib.asynccontextmanager
    async def slot(self, model: str, call: Hashable, priority: int) -> AsyncIterator[None]:
        """Holds a place in ``model``'s window while the body sends one request of ``call``."""
        lane = self._lanes.setdefault(model, _Lane())
        state = lane.calls.get(call)
        if state is None:
            state = lane.calls[call] = _Call(priority, next(self._arrivals))
        if lane.in_flight < self.window and not lane.waiters():
            lane.grant(state)
        else:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            state.waiting.append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release(model, lane, call)  # granted as the waiter was cancelled
                else:
                    self._forget_if_idle(model, lane, call)
                raise
        try:
            yield
        finally:
            self._release(model, lane, call)

    def _release(self, model: str, lane: _Lane, call: Hashable) -> None:
        lane.calls[call].in_flight -= 1
        lane.in_flight -= 1
        waiters = lane.waiters()
        if waiters and lane.in_flight < self.window:
            chosen = min(waiters, key=lambda c: (c.priority, c.granted, c.arrival))
            lane.grant(chosen)
            chosen.waiting.popleft().set_result(None)
        self._forget_if_idle(model, lane, call)

    def _forget_if_idle(self, model: str, lane: _Lane, call: Hashable) -> None:
        state = lane.calls.get(call)
        waiting = state is not None and any(not turn.done() for turn in state.waiting)
        if state is not None and state.in_flight == 0 and not waiting:
            del lane.calls[call]
        if not lane.calls:
            del self._lanes[model]
