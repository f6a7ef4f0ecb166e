"""Faults under load, for real: Triton or a model's stub process is killed while calls run,
and the server is stopped with calls in flight. The rank service itself is never restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.builder.builder import DEFAULT_MODEL_NAME
from tests.integration.conftest import (
    Server,
    children,
    cmdline,
    gone,
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
        # The load is up once every caller has had a call answered.
        deadline = time.monotonic() + 60
        while sum(o.code == grpc.StatusCode.OK for o in outcomes) < 2 * callers:
            assert time.monotonic() < deadline, "no load before the fault"
            await asyncio.sleep(0.05)
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


LONG_CALL = [" ".join(["the tide comes in over the flats"] * 30)] * 64


async def _call_in_flight(
    server: Server, documents: list[str] = LONG_CALL
) -> asyncio.Future[pb.RankResponse]:
    """Starts a long call and returns once the service holds its rows."""
    channel = grpc.aio.insecure_channel(server.address)
    stub = pb_grpc.RankStub(channel)
    call = asyncio.ensure_future(
        stub.Rank(pb.RankRequest(query="tide", documents=documents), timeout=120)
    )
    call.add_done_callback(lambda _: asyncio.ensure_future(channel.close()))
    deadline = time.monotonic() + 30
    while _rows_in_flight(server) < len(documents):
        assert not call.done() and time.monotonic() < deadline, "the call never got in flight"
        await asyncio.sleep(0.01)
    return call


def _rows_in_flight(server: Server) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("reranker_rows_in_flight ")]
    return float(line.split()[1])


async def test_shutdown_drains_calls_in_flight(default_repository: Path, tmp_path: Path) -> None:
    # A grace far longer than the call: it must complete, however slow the machine is today.
    server = await asyncio.to_thread(
        start_server, default_repository, tmp_path, DEFAULT_MODEL_NAME, shutdown_grace_s="60"
    )
    try:
        in_flight = await _call_in_flight(server)
        server.process.send_signal(signal.SIGTERM)
        response = await in_flight
        assert len(response.results) == 64
        assert await asyncio.to_thread(server.process.wait, 60) == 0
    finally:
        await asyncio.to_thread(stop_server, server)


async def test_stopping_mid_request_leaves_no_process_behind(
    default_repository: Path, tmp_path: Path
) -> None:
    # A grace shorter than the call, and a call longer than Triton's own exit timeout (5 s):
    # Triton exits while its encoder stub is still busy with the call.
    server = await asyncio.to_thread(
        start_server, default_repository, tmp_path, DEFAULT_MODEL_NAME, shutdown_grace_s="0.1"
    )
    try:
        triton = triton_pid(server)
        family = [triton, *(p.pid for p in psutil.Process(triton).children(recursive=True))]
        assert any("triton_python_backend_stub" in cmdline(pid) for pid in family), family
        in_flight = await _call_in_flight(server, LONG_CALL * 6)
        server.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError):
            await in_flight
        assert await asyncio.to_thread(server.process.wait, 60) == 0
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in family) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        left = [(pid, cmdline(pid)) for pid in family if not gone(pid)]
        assert not left, f"processes of the stopped server are still running: {left}"
    finally:
        await asyncio.to_thread(stop_server, server)
