"""Two Triton replicas behind two rank services, spread over by gRPC's round robin: calls
keep succeeding while one of each is stopped and started again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import tritonclient.grpc.aio as triton_aio
from reranker_client import AsyncRerankClient, RerankError

from reranker.builder.builder import DEFAULT_MODEL_NAME
from reranker.service.metrics import ServiceMetrics
from reranker.service.triton_server import TritonServer
from reranker.settings import Settings
from tests.integration.conftest import CROSS_ENCODER, DEFAULT_INT8, free_port, rank_service

DOCUMENTS = ["rivers flow into the sea", "tax forms are due in april", "the delta of a river"]
RANK = "/reranker.v1.Rank/Rank"


def _triton(repository: Path, log: Path, pin: str = "") -> TritonServer:
    return TritonServer(
        Settings(
            model_repository=repository,
            triton_grpc_port=free_port(),
            triton_http_port=free_port(),
            triton_metrics_port=free_port(),
            triton_log=log,
            default_model=DEFAULT_MODEL_NAME if pin else "",
            pin=pin,
        )
    )


async def _ready(url: str) -> set[str]:
    """The served models (ensembles) a Triton has loaded."""
    async with triton_aio.InferenceServerClient(url) as client:
        index = await client.get_model_repository_index()
    return {m.name for m in index.models if m.state == "READY" and "__" not in m.name}


async def _inferences(url: str) -> int:
    async with triton_aio.InferenceServerClient(url) as client:
        stats = await client.get_inference_statistics(DEFAULT_MODEL_NAME)
    return sum(m.inference_count for m in stats.model_stats)


async def test_calls_succeed_while_a_triton_and_a_rank_service_restart(
    default_repository: Path, tmp_path: Path
) -> None:
    tritons = [_triton(default_repository, tmp_path / f"triton{i}.log") for i in range(2)]
    await asyncio.gather(*(asyncio.to_thread(t.start) for t in tritons))
    ports = [free_port(), free_port()]
    metrics = [ServiceMetrics(), ServiceMetrics()]
    triton_url = ",".join(t.grpc_url for t in tritons)

    def service(i: int) -> contextlib.AbstractAsyncContextManager[str]:
        return rank_service(
            triton_url,
            grpc_port=ports[i],
            default_model=DEFAULT_MODEL_NAME,
            metrics=metrics[i],
            grace_s=5.0,
        )

    failures: list[str] = []
    succeeded = 0
    done = asyncio.Event()
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    try:
        async with contextlib.AsyncExitStack() as services:
            first = await services.enter_async_context(contextlib.AsyncExitStack())
            await first.enter_async_context(service(0))
            await services.enter_async_context(service(1))
            async with AsyncRerankClient(target, timeout=30) as client:

                async def call_repeatedly() -> None:
                    nonlocal succeeded
                    while not done.is_set():
                        try:
                            results = await client.rank("where do rivers go", DOCUMENTS)
                            assert sorted(r["corpus_id"] for r in results) == [0, 1, 2]
                            succeeded += 1
                        except RerankError as error:
                            failures.append(str(error))

                async def more_calls_succeed(count: int = 8, within_s: float = 60) -> None:
                    """Traffic goes on through each step: waits for ``count`` more successes."""
                    target, deadline = succeeded + count, time.monotonic() + within_s
                    while succeeded < target:
                        assert time.monotonic() < deadline, (succeeded, failures[:3])
                        await asyncio.sleep(0.05)

                async def traffic_reaches(url: str, within_s: float = 60) -> None:
                    """The engine's channel reconnects to a restarted replica on gRPC's
                    backoff schedule: waits for calls to reach it."""
                    deadline = time.monotonic() + within_s
                    while await _inferences(url) == 0:
                        assert time.monotonic() < deadline, "no traffic reached the restart"
                        await asyncio.sleep(0.2)

                callers = [asyncio.create_task(call_repeatedly()) for _ in range(4)]
                await more_calls_succeed()
                await asyncio.to_thread(tritons[0].stop)
                await more_calls_succeed()
                await asyncio.to_thread(tritons[0].start)
                await more_calls_succeed()
                await traffic_reaches(tritons[0].grpc_url)
                await first.aclose()  # rank service 0 drains and stops
                await more_calls_succeed()
                async with service(0):
                    await more_calls_succeed(12)
                    done.set()
                    await asyncio.gather(*callers)
                inferences = [await _inferences(t.grpc_url) for t in tritons]
    finally:
        for triton in tritons:
            await asyncio.to_thread(triton.stop)
    assert not failures, failures[:5]
    assert succeeded > 20
    # Both of each did work (the restarted Triton counts from its restart).
    assert all(n > 0 for n in inferences), inferences
    calls = [
        m.registry.get_sample_value("reranker_calls_total", {"method": RANK, "code": "OK"})
        for m in metrics
    ]
    assert all(c and c > 0 for c in calls), calls


async def test_a_model_loads_and_unloads_on_every_replica(repository: Path, tmp_path: Path) -> None:
    """Behind a list of replicas, the catalog's loads and unloads reach each of them, so a
    call that round robin sends to either finds its model; a replica that restarts gets the
    resident models back."""
    tritons = [
        _triton(repository, tmp_path / f"triton{i}.log", pin=DEFAULT_MODEL_NAME) for i in range(2)
    ]
    await asyncio.gather(*(asyncio.to_thread(t.start) for t in tritons))
    urls = [t.grpc_url for t in tritons]
    try:
        assert [await _ready(url) for url in urls] == [{DEFAULT_MODEL_NAME}] * 2
        async with (
            rank_service(
                ",".join(urls),
                default_model=DEFAULT_MODEL_NAME,
                max_loaded_models=2,
                health_interval_s=1.0,
            ) as address,
            AsyncRerankClient(address, timeout=120) as client,
        ):
            for model in (CROSS_ENCODER, DEFAULT_INT8):
                for _ in range(4):  # round robin reaches both replicas
                    results = await client.rank("where do rivers go", DOCUMENTS, model=model)
                    assert sorted(r["corpus_id"] for r in results) == [0, 1, 2]
                expected = {DEFAULT_MODEL_NAME, model}
                assert [await _ready(url) for url in urls] == [expected] * 2, model
            # A replica back from a restart has its pinned model alone: the catalog loads
            # the resident one onto it again, no call needed.
            await asyncio.to_thread(tritons[1].stop)
            await asyncio.to_thread(tritons[1].start)
            deadline = time.monotonic() + 60
            while (ready := await _ready(urls[1])) != expected:
                assert time.monotonic() < deadline, ready
                await asyncio.sleep(0.5)
    finally:
        for triton in tritons:
            await asyncio.to_thread(triton.stop)
