"""The shared-service row: one server, callers of different sizes and priorities.

Rank services over the same Triton and model: one with the server's defaults ("window": 4
requests of at most 32 rows in flight per model), one with a small window ("small window": 2
requests of at most 8 rows), and one with a window no call fills, which sends every request
of a call at once as the service did before it had a window ("unbounded"). Each measures, on
MiniLM fp32:

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

from harness import p99
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
# Calls each saturating caller makes in a throughput run, and the rounds of runs.
THROUGHPUT_CALLS = 4
THROUGHPUT_ROUNDS = 3
# A window that no call reaches: every request of a call goes to Triton at once.
UNBOUNDED = 100_000
# The services compared: name -> (requests_in_flight_per_model, max_rows_per_request); None
# leaves the server's default.
SERVICES: dict[str, tuple[int | None, int | None]] = {
    "window": (None, None),
    "small window": (2, 8),
    "unbounded": (UNBOUNDED, 32),
}


@dataclass
class SharedServiceRow:
    """One rank service's figures; latencies in milliseconds."""

    service: str
    requests_in_flight_per_model: int | None
    max_rows_per_request: int | None
    small_alone_p50_ms: float
    small_alone_p99_ms: float
    beside_large_p50_ms: float
    beside_large_p99_ms: float
    urgent_beside_saturation_p50_ms: float
    urgent_beside_saturation_p99_ms: float
    # The median over the rounds, and each round's.
    saturating_pairs_per_s: float
    saturating_runs: list[float]


def documents(count: int) -> list[str]:
    """``count`` documents of workload (a), repeated as needed."""
    pool = workload("a")
    return [pool[i % len(pool)] for i in range(count)]


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


async def latencies(address: str) -> dict[str, list[float]]:
    """Small calls alone, beside a large call, and urgent beside saturating callers."""
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
    return {"alone": alone, "beside_large": beside_large, "urgent": urgent}


async def throughput(address: str) -> float:
    from reranker_client import AsyncRerankClient

    async with AsyncRerankClient(address, timeout=600) as client:
        return await saturating_throughput(client)


def shared_service_rows(
    repository: Path,
    triton_grpc: str,
    workdir: Path,
    model: str = "minilm",
    services: dict[str, tuple[int | None, int | None]] = SERVICES,
) -> list[SharedServiceRow]:
    """The row of each service, each a rank-service process of its own over ``triton_grpc``,
    all of them up for the whole row: latencies service by service, then the saturating
    load's throughput service after service in each of :data:`THROUGHPUT_ROUNDS` rounds (the
    machine's speed drifts; a round measures every service in the same stretch of it)."""
    from engines import start_bench_server

    from tests.launcher import stop_server

    servers = {}
    try:
        for service, (window, request_rows) in services.items():
            settings = {"triton_url": triton_grpc, "http_port": "-1", "metrics_port": "-1"}
            if window is not None:
                settings["requests_in_flight_per_model"] = str(window)
            if request_rows is not None:
                settings["max_rows_per_request"] = str(request_rows)
            servers[service] = start_bench_server(
                repository, workdir / f"shared-{service.replace(' ', '-')}", model, **settings
            )
        measured = {}
        for service, server in servers.items():
            print(f"  shared service: {service}, latencies", flush=True)
            measured[service] = asyncio.run(latencies(server.address))
        rates: dict[str, list[float]] = {service: [] for service in servers}
        for round_ in range(THROUGHPUT_ROUNDS):
            for service, server in servers.items():
                rates[service].append(asyncio.run(throughput(server.address)))
            print(
                f"  shared service, round {round_ + 1}: "
                + ", ".join(f"{s} {r[-1]:.1f} pairs/s" for s, r in rates.items()),
                flush=True,
            )
    finally:
        for server in servers.values():
            stop_server(server, 60)
    rows = []
    for service, (window, request_rows) in services.items():
        calls = measured[service]
        rows.append(
            SharedServiceRow(
                service,
                window,
                request_rows,
                statistics.median(calls["alone"]),
                p99(calls["alone"]),
                statistics.median(calls["beside_large"]),
                p99(calls["beside_large"]),
                statistics.median(calls["urgent"]),
                p99(calls["urgent"]),
                statistics.median(rates[service]),
                rates[service],
            )
        )
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


def shared_service_targets(machine: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The row's targets (name, measured, comparison, goal) in a run's report."""
    rows = {row["service"]: row for row in machine.get("shared_service", [])}
    fair, unbounded = rows.get("window"), rows.get("unbounded")

    def times_alone(field: str, alone: str) -> float | None:
        return fair[field] / fair[alone] if fair else None

    return [
        (
            "small beside 600-doc call, p50 x alone",
            times_alone("beside_large_p50_ms", "small_alone_p50_ms"),
            "<=",
            3.0,
        ),
        (
            "small beside 600-doc call, p99 x alone",
            times_alone("beside_large_p99_ms", "small_alone_p99_ms"),
            "<=",
            5.0,
        ),
        (
            "priority 0 beside saturation, p50 x alone",
            times_alone("urgent_beside_saturation_p50_ms", "small_alone_p50_ms"),
            "<=",
            2.0,
        ),
        (
            "saturating load, window / unbounded",
            _paired_ratio(fair, unbounded) if fair and unbounded else None,
            ">=",
            0.95,
        ),
    ]


def _paired_ratio(row: dict[str, Any], partner: dict[str, Any]) -> float:
    """The median over rounds of ``row``'s rate over ``partner``'s in the same round."""

    def runs(r: dict[str, Any]) -> list[float]:
        return r.get("saturating_runs") or [r["saturating_pairs_per_s"]]

    return statistics.median(a / b for a, b in zip(runs(row), runs(partner), strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--output", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--service",
        nargs="+",
        metavar="WINDOWxROWS",
        help="services to compare, e.g. 2x8 (requests in flight x rows a request); "
        "default: the server's defaults against an unbounded window",
    )
    args = parser.parse_args()
    services = SERVICES
    if args.service:
        services = {
            spec: (int(spec.split("x")[0]), int(spec.split("x")[1])) for spec in args.service
        }
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
        rows = shared_service_rows(repository, server.triton_grpc, args.workdir, services=services)
    finally:
        stop_server(server, 60)
    as_dicts = [asdict(row) for row in rows]
    print(shared_service_table(as_dicts))
    if args.output:
        args.output.write_text(json.dumps(as_dicts, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
