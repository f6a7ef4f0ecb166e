"""Faults under load, for real: Triton or a model's stub process is killed while calls run,
and the server is stopped with calls in flight. The rank service itself is never restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.builder import DEFAULT_MODEL_NAME
from tests.integration.conftest import (
    Server,
    children,
    cmdline,
    start_server,
    stop_server,
    triton_pid,
)

REQUEST = pb.RankRequest(
    query="where do rivers end",
    documents=[f"document {i}: rivers flow into the sea at the delta" for i in range(8)],
)
RECOVERY_S = 60.0


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    code: grpc.StatusCode


@pytest.fixture
async def own_server(default_repository: Path, tmp_path: Path) -> AsyncIterator[Server]:
    server = await asyncio.to_thread(start_server, default_repository, tmp_path, DEFAULT_MODEL_NAME)
    try:
        yield server
    finally:
        await asyncio.to_thread(stop_server, server)


async def _load_through_fault(
    server: Server, fault: Callable[[], None], callers: int = 4
) -> tuple[float, list[Outcome]]:
    """Keeps ``callers`` calls going (no client retries), applies ``fault``, and runs on until
    a call that started after the fault has succeeded. Returns the fault time and outcomes."""
    outcomes: list[Outcome] = []
    done = asyncio.Event()
    fault_at = float("inf")
    options = [("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(server.address, options=options) as channel:
        stub = pb_grpc.RankStub(channel)

        async def call_repeatedly() -> None:
            while not done.is_set():
                started = time.monotonic()
                try:
                    await stub.Rank(REQUEST, timeout=10)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    code = error.code()
                outcomes.append(Outcome(started, time.monotonic(), code))
                if code != grpc.StatusCode.OK:
                    await asyncio.sleep(0.05)
                elif started > fault_at:
                    done.set()

        tasks = [asyncio.create_task(call_repeatedly()) for _ in range(callers)]
        await asyncio.sleep(2.0)
        fault_at = time.monotonic()
        fault()
        try:
            await asyncio.wait_for(done.wait(), RECOVERY_S)
        finally:
            done.set()
            await asyncio.gather(*tasks)
    return fault_at, outcomes


def _check(fault_at: float, outcomes: list[Outcome], fail_within_s: float) -> None:
    before = [o for o in outcomes if o.ended < fault_at]
    failed = [o for o in outcomes if o.code != grpc.StatusCode.OK]
    assert before and all(o.code == grpc.StatusCode.OK for o in before)
    assert failed, "the fault must have been felt for this test to mean anything"
    assert {o.code for o in failed} == {grpc.StatusCode.UNAVAILABLE}
    slowest = max(o.ended - max(o.started, fault_at) for o in failed)
    assert slowest <= fail_within_s, f"a failing call took {slowest:.2f}s"


async def test_triton_killed_under_load_is_restarted(own_server: Server) -> None:
    killed = triton_pid(own_server)
    fault_at, outcomes = await _load_through_fault(
        own_server, lambda: os.kill(killed, signal.SIGKILL)
    )
    _check(fault_at, outcomes, fail_within_s=1.0)
    assert own_server.process.poll() is None
    assert triton_pid(own_server) != killed


async def test_a_killed_model_process_is_recovered(own_server: Server) -> None:
    triton = triton_pid(own_server)
    (stub,) = [p for p in children(triton) if "__encoder_0_0" in cmdline(p)]
    fault_at, outcomes = await _load_through_fault(
        own_server, lambda: os.kill(stub, signal.SIGKILL)
    )
    # Triton notices a dead stub only when a request reaches it (about a second); calls
    # that started meanwhile fail when the launcher kills Triton right after.
    _check(fault_at, outcomes, fail_within_s=2.5)
    assert own_server.process.poll() is None


async def test_shutdown_drains_calls_in_flight(own_server: Server) -> None:
    documents = [" ".join(["the tide comes in over the flats"] * 30)] * 64
    async with grpc.aio.insecure_channel(own_server.address) as channel:
        stub = pb_grpc.RankStub(channel)
        in_flight = asyncio.ensure_future(
            stub.Rank(pb.RankRequest(query="tide", documents=documents), timeout=30)
        )
        await asyncio.sleep(0.3)
        assert not in_flight.done(), "the call must still be running for this test to mean it"
        own_server.process.send_signal(signal.SIGTERM)
        response = await in_flight
        assert len(response.results) == 64
    assert await asyncio.to_thread(own_server.process.wait, 30) == 0
