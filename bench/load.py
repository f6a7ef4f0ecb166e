"""Overload and soak test of the server (``make load``; not part of ``make test``).

1. Capacity: calls per second the server sustains with 4 callers in a closed loop.
2. Overload: calls arrive (Poisson) at 4x that rate for 60 s. Admitted calls must keep a
   bounded p99, refused ones (RESOURCE_EXHAUSTED) must be refused fast, and the server must
   neither crash nor grow without bound.
3. Soak: calls arrive at the measured capacity for 10 minutes; resident memory of the whole
   server (rank service, Triton, model processes) must grow by less than 5% after warm-up.

Calls carry 10 documents of MS MARCO passage length. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psutil
from engines import start_bench_server
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc
from run import ROOT
from workloads import QUERY, workload

from tests.launcher import stop_server

OK = grpc.StatusCode.OK
REFUSED = grpc.StatusCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class Call:
    started: float
    seconds: float
    code: str


@dataclass
class Phase:
    name: str
    seconds: float
    offered_per_s: float
    calls: list[Call] = field(default_factory=list)
    rss_mib: list[tuple[float, float]] = field(default_factory=list)

    def latencies(self, code: grpc.StatusCode) -> list[float]:
        return sorted(c.seconds for c in self.calls if c.code == code.name)

    def summary(self) -> dict[str, object]:
        admitted, refused = self.latencies(OK), self.latencies(REFUSED)
        other: dict[str, int] = {}
        for c in self.calls:
            if c.code not in (OK.name, REFUSED.name):
                other[c.code] = other.get(c.code, 0) + 1
        rss = [r for _, r in self.rss_mib]
        return {
            "phase": self.name,
            "seconds": self.seconds,
            "offered_calls_per_s": round(self.offered_per_s, 2),
            "calls": len(self.calls),
            "admitted": len(admitted),
            "admitted_per_s": round(len(admitted) / self.seconds, 2),
            "admitted_p50_ms": _ms(_quantile(admitted, 0.5)),
            "admitted_p99_ms": _ms(_quantile(admitted, 0.99)),
            "admitted_max_ms": _ms(admitted[-1] if admitted else None),
            "refused": len(refused),
            "refused_p50_ms": _ms(_quantile(refused, 0.5)),
            "refused_p99_ms": _ms(_quantile(refused, 0.99)),
            "other_errors": other,
            "rss_first_mib": round(rss[0], 1) if rss else None,
            "rss_max_mib": round(max(rss), 1) if rss else None,
            "rss_last_mib": round(rss[-1], 1) if rss else None,
        }


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def server_rss_mib(pid: int) -> float:
    """Resident memory of the server process and every process below it."""
    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


class Load:
    def __init__(self, address: str, server_pid: int, documents: list[str], per_call: int):
        self._channel = grpc.aio.insecure_channel(address, options=[("grpc.enable_retries", 0)])
        self._stub = pb_grpc.RankStub(self._channel)
        self._pid = server_pid
        self._documents = documents
        self._per_call = per_call
        self._rng = random.Random(0)

    def _request(self) -> pb.RankRequest:
        return pb.RankRequest(
            query=QUERY, documents=self._rng.sample(self._documents, self._per_call), top_k=3
        )

    async def _call(self, phase: Phase) -> None:
        started = time.monotonic()
        try:
            await self._stub.Rank(self._request(), timeout=60)
            code = OK.name
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        phase.calls.append(Call(started, time.monotonic() - started, code))

    async def _sample_rss(self, phase: Phase, every_s: float = 1.0) -> None:
        start = time.monotonic()
        while True:
            phase.rss_mib.append((time.monotonic() - start, server_rss_mib(self._pid)))
            await asyncio.sleep(every_s)

    async def closed_loop(self, name: str, seconds: float, callers: int) -> Phase:
        phase = Phase(name, seconds, 0.0)
        end = time.monotonic() + seconds

        async def caller() -> None:
            while time.monotonic() < end:
                await self._call(phase)

        await asyncio.gather(*(caller() for _ in range(callers)))
        return phase

    async def open_loop(self, name: str, seconds: float, per_s: float) -> Phase:
        """Poisson arrivals at ``per_s``: calls start on schedule whatever the server does."""
        phase = Phase(name, seconds, per_s)
        sampler = asyncio.create_task(self._sample_rss(phase))
        tasks: set[asyncio.Task[None]] = set()
        end = time.monotonic() + seconds
        arrival = time.monotonic()
        while arrival < end:
            arrival += self._rng.expovariate(per_s)
            await asyncio.sleep(max(0.0, arrival - time.monotonic()))
            task = asyncio.create_task(self._call(phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        sampler.cancel()
        return phase

    async def close(self) -> None:
        await self._channel.close()


def _print(summaries: list[dict[str, object]]) -> None:
    keys = [k for k in summaries[0] if k != "phase"]
    print(f"{'':24}" + "".join(f"{s['phase']:>16}" for s in summaries))
    for key in keys:
        print(f"{key:24}" + "".join(f"{s[key]!s:>16}" for s in summaries))


async def run(args: argparse.Namespace) -> dict[str, object]:
    from reranker.builder.builder import DEFAULT_MODEL_NAME

    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "max_rows_in_flight": str(args.max_rows_in_flight),
        "max_documents_per_call": str(min(args.max_rows_in_flight, 1000)),
        "inference_timeout_s": "60",
    }
    server = start_bench_server(
        args.repository, args.workdir / "server", DEFAULT_MODEL_NAME, **settings
    )
    load = Load(server.address, server.process.pid, workload("a"), args.per_call)
    try:
        await load.closed_loop("warm-up", 5, 2)
        capacity = await load.closed_loop("capacity", args.capacity_s, 4)
        per_s = len(capacity.latencies(OK)) / args.capacity_s
        print(f"capacity: {per_s:.2f} calls/s ({per_s * args.per_call:.1f} pairs/s)", flush=True)
        overload = await load.open_loop("overload", args.overload_s, args.factor * per_s)
        _print([overload.summary()])
        soak = await load.open_loop("soak", args.soak_s, per_s)
        alive = server.process.poll() is None
    finally:
        await load.close()
        stop_server(server, 60)
    warm = [r for t, r in soak.rss_mib if t >= args.warm_up_s]
    growth = (warm[-1] - warm[0]) / warm[0] if len(warm) > 1 else None
    summaries = [capacity.summary(), overload.summary(), soak.summary()]
    _print(summaries)
    print(f"soak RSS growth after {args.warm_up_s:.0f}s warm-up: {growth:.2%}" if growth else "")
    print(f"server alive after the load: {alive}")
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "documents_per_call": args.per_call,
        "max_rows_in_flight": args.max_rows_in_flight,
        "capacity_calls_per_s": round(per_s, 2),
        "phases": summaries,
        "soak_rss_growth": None if growth is None else round(growth, 4),
        "server_alive": alive,
        "soak_rss_mib": [(round(t, 1), round(r, 1)) for t, r in soak.rss_mib],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "load")
    parser.add_argument("--per-call", type=int, default=10, help="documents per call")
    parser.add_argument("--max-rows-in-flight", type=int, default=256)
    parser.add_argument("--capacity-s", type=float, default=20)
    parser.add_argument("--factor", type=float, default=4, help="overload, x capacity")
    parser.add_argument("--overload-s", type=float, default=60)
    parser.add_argument("--soak-s", type=float, default=600)
    parser.add_argument("--warm-up-s", type=float, default=60, help="soak RSS baseline time")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    alive = bool(result["server_alive"])
    growth = result["soak_rss_growth"]
    return 0 if alive and (growth is None or float(str(growth)) < 0.05) else 1


if __name__ == "__main__":
    sys.exit(main())
