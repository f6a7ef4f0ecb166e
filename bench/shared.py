"""The shared-service row: one server, callers of different sizes and priorities.

Two rank services over the same Triton and model, run alternately: one with the dispatcher's
window (``requests_in_flight_per_model``, the default 4), one with a window no call fills,
which sends every request of a call at once as the service did before it had a window
("unbounded"). Each measures, on MiniLM fp32:

- small calls (10 documents) alone, one at a time: p50 and p99;
- the same small calls while a 600-document call of the same priority runs (the large call
  is sent again as soon as it ends);
- priority-0 small calls while 4 callers at priority 5 saturate the server (100 documents a
  call, each sent again as soon as it ends);
- the saturating load alone: 4 callers, 100 documents a call, pairs per second.

Run alone: ``python bench/shared.py`` (builds MiniLM, starts its own server); ``make bench``
runs it over the benchmark's server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workloads import QUERY, workload

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMALL_DOCUMENTS = 10
LARGE_DOCUMENTS = 600
SATURATING_CALLERS = 4
SATURATING_DOCUMENTS = 100
SATURATING_PRIORITY = 5
# Small calls measured per situation, and pauses between them so each meets the load anew.
SMALL_CALLS = 15
SMALL_CALL_GAP_S = 0.2
# Calls each saturating caller makes in a throughput run.
THROUGHPUT_CALLS = 6
# A window that no call reaches: every request of a call goes to Triton at once.
UNBOUNDED = 100_000
WINDOWS = {"window 4": 4, "unbounded": UNBOUNDED}


@dataclass
class SharedServiceRow:
    """One rank service's figures; latencies in milliseconds."""

    service: str
    requests_in_flight_per_model: int
    small_alone_p50_ms: float
    small_alone_p99_ms: float
    beside_large_p50_ms: float
    beside_large_p99_ms: float
    urgent_beside_saturation_p50_ms: float
    urgent_beside_saturation_p99_ms: float
    saturating_pairs_per_s: float


def documents(count: int) -> list[str]:
    """``count`` documents of workload (a), repeated as needed."""
    pool = workload("a")
    return [pool[i % len(pool)] for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def small_calls(client: Any, priority: int = 0) -> list[float]:
    """Milliseconds of each of :data:`SMALL_CALLS` small calls, made one after another."""
    small = documents(SMALL_DOCUMENTS)
    latencies = []
    for _ in range(SMALL_CALLS):
        start = time.perf_counter()
        await client.rank(QUERY, small, priority=priority)
        latencies.append((time.perf_counter() - start) * 1000)
        await asyncio.sleep(SMALL_CALL_GAP_S)
    return latencies


@contextlib.asynccontextmanager
async def background(callers: int, call: Callable[[], Awaitable[Any]]) -> AsyncIterator[None]:
    """``callers`` loops making ``call`` again as soon as it ends, until the body is done;
    the body starts once every loop has a call in flight for a while."""
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            await call()

    tasks = [asyncio.create_task(loop()) for _ in range(callers)]
    await asyncio.sleep(0.5)
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def saturating_throughput(client: Any) -> float:
    calls = documents(SATURATING_DOCUMENTS)

    async def caller() -> None:
        for _ in range(THROUGHPUT_CALLS):
            await client.rank(QUERY, calls, priority=SATURATING_PRIORITY)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(SATURATING_CALLERS)))
    elapsed = time.perf_counter() - start
    return SATURATING_CALLERS * THROUGHPUT_CALLS * SATURATING_DOCUMENTS / elapsed


async def measure(address: str, service: str, window: int) -> SharedServiceRow:
    from reranker_client import AsyncRerankClient

    async with AsyncRerankClient(address, timeout=600) as client:
        await client.rank(QUERY, documents(SMALL_DOCUMENTS))  # warm
        alone = await small_calls(client)
        large = documents(LARGE_DOCUMENTS)
        async with background(1, lambda: client.rank(QUERY, large)):
            beside_large = await small_calls(client)
        saturating = documents(SATURATING_DOCUMENTS)
        load = lambda: client.rank(QUERY, saturating, priority=SATURATING_PRIORITY)  # noqa: E731
        async with background(SATURATING_CALLERS, load):
            urgent = await small_calls(client, priority=0)
        throughput = await saturating_throughput(client)
    return SharedServiceRow(
        service,
        window,
        statistics.median(alone),
        percentile(alone, 0.99),
        statistics.median(beside_large),
        percentile(beside_large, 0.99),
        statistics.median(urgent),
        percentile(urgent, 0.99),
        throughput,
    )


def shared_service_rows(
    repository: Path, triton_grpc: str, workdir: Path, model: str = "minilm"
) -> list[SharedServiceRow]:
    """The row for each window, each rank service a process of its own over ``triton_grpc``."""
    from engines import start_bench_server

    from tests.launcher import stop_server

    rows = []
    for service, window in WINDOWS.items():
        print(f"  shared service: {service}", flush=True)
        server = start_bench_server(
            repository,
            workdir / f"shared-{window}",
            model,
            triton_url=triton_grpc,
            requests_in_flight_per_model=str(window),
            http_port="-1",
            metrics_port="-1",
        )
        try:
            rows.append(asyncio.run(measure(server.address, service, window)))
        finally:
            stop_server(server, 60)
        print(f"    {shared_service_line(rows[-1])}", flush=True)
    return rows


def shared_service_line(row: SharedServiceRow) -> str:
    return (
        f"{row.service}: small alone p50 {row.small_alone_p50_ms:.0f} ms "
        f"p99 {row.small_alone_p99_ms:.0f}; beside a {LARGE_DOCUMENTS}-document call "
        f"p50 {row.beside_large_p50_ms:.0f} p99 {row.beside_large_p99_ms:.0f}; priority 0 "
        f"beside {SATURATING_CALLERS} priority-{SATURATING_PRIORITY} callers "
        f"p50 {row.urgent_beside_saturation_p50_ms:.0f} "
        f"p99 {row.urgent_beside_saturation_p99_ms:.0f}; "
        f"saturating load {row.saturating_pairs_per_s:.1f} pairs/s"
    )


def shared_service_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, ratios to the small calls alone beside them."""
    lines = [
        "| service | small alone p50 / p99 ms | beside a 600-doc call p50 / p99 ms (x alone) "
        "| priority 0 beside saturation p50 / p99 ms (x alone) | saturating pairs/s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        alone50, alone99 = row["small_alone_p50_ms"], row["small_alone_p99_ms"]
        beside50, beside99 = row["beside_large_p50_ms"], row["beside_large_p99_ms"]
        urgent50 = row["urgent_beside_saturation_p50_ms"]
        urgent99 = row["urgent_beside_saturation_p99_ms"]
        lines.append(
            f"| {row['service']} | {alone50:.0f} / {alone99:.0f} "
            f"| {beside50:.0f} / {beside99:.0f} ({beside50 / alone50:.1f}x / "
            f"{beside99 / alone99:.1f}x) | {urgent50:.0f} / {urgent99:.0f} "
            f"({urgent50 / alone50:.1f}x) | {row['saturating_pairs_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--output", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    from engines import build_current, start_bench_server

    from reranker.builder.builder import BuildOptions
    from tests.checkpoints import minilm_cross_encoder
    from tests.launcher import stop_server

    checkpoint = args.workdir / "checkpoints" / "minilm"
    if not checkpoint.is_dir():
        minilm_cross_encoder(checkpoint)
    repository = args.workdir / "shared-repository"
    build_current(checkpoint, BuildOptions(name="minilm"), repository)
    server = start_bench_server(repository, args.workdir / "shared-server")
    try:
        rows = shared_service_rows(repository, server.triton_grpc, args.workdir)
    finally:
        stop_server(server, 60)
    as_dicts = [asdict(row) for row in rows]
    print(shared_service_table(as_dicts))
    if args.output:
        args.output.write_text(json.dumps(as_dicts, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
