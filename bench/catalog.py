"""The catalog row: many models on one server, only the hot ones resident.

A catalog of MiniLM-sized models (the offline default's graph under 20 names, built once and
cached, sharing one tokenizer model as ``reranker build`` makes them) is served with
``--max-loaded-models 4``, the first model pinned as the default. One caller sends a skewed
sequence of 10-document calls: 80% to 3 hot models, 20% spread over the others. It measures:

- resident memory of Triton and all its model processes, sampled every 0.1 s, against what
  4 resident models take (Triton with the pinned model, plus 3 more, measured here);
- hot-model calls against a server that serves just the 3 hot models (every one resident),
  the same sequence of hot calls, p50, resident memory sampled in both runs alike;
- cold calls (a call whose model was not loaded when it was sent): p50 and p99;
- time to SERVING with the whole catalog against a repository of one model (median of 3);
- what each model loaded beside the first adds, sharing its tokenizer: resident memory and
  PSS of the whole tree (the memory bench's measure of an added model).

Run alone: ``python bench/catalog.py [--output bench/results/catalog.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import p99
from workloads import QUERY, workload

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from tests.launcher import Server

MODELS = 20
HOT = 3
MAX_LOADED = 4
HOT_SHARE = 0.8
CALLS = 300
DOCUMENTS = 10
SEED = 20261207


@dataclass
class CatalogRow:
    models: int
    max_loaded_models: int
    calls: int
    # Resident memory (MB) of Triton and its model processes: the most sampled, and what
    # ``max_loaded_models`` resident models take (measured before the run).
    peak_resident_mb: float
    budget_models_resident_mb: float
    # What each model loaded after the first added (MB), sharing its tokenizer: to the
    # resident memory, and to the proportional set size (PSS: pages shared between processes,
    # the libraries each stub maps and the shared memory Triton and a stub both map, split
    # between them, so the tree's PSS is what it really holds).
    added_per_model_mb: float
    added_per_model_pss_mb: float
    hot_p50_ms: float
    hot_alone_p50_ms: float
    cold_calls: int
    cold_p50_ms: float
    cold_p99_ms: float
    serving_s: float
    serving_one_model_s: float


def names() -> list[str]:
    return [f"catalog-{i:02d}" for i in range(MODELS)]


def build_catalog(repository: Path) -> None:
    """The catalog, each model built once (cached across runs) and sharing one tokenizer."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from reranker.builder.builder import BuildOptions
    from reranker.builder.sharing import share_tokenizer
    from reranker.service.triton_models import describe
    from tests.model_cache import cached_build

    for name in names():
        if (repository / name).is_dir():
            continue
        cached_build(None, BuildOptions(name=name), repository)
        config = text_format.Parse(
            (repository / name / "config.pbtxt").read_text(), mc.ModelConfig()
        )
        model = describe(config)
        assert model is not None
        share_tokenizer(model, repository)


def sequence(rng: random.Random) -> list[str]:
    catalog = names()
    hot, cold = catalog[:HOT], catalog[HOT:]
    return [rng.choice(hot) if rng.random() < HOT_SHARE else rng.choice(cold) for _ in range(CALLS)]


class ResidentSampler:
    """Samples the resident memory of a server's Triton tree every 0.1 s in a thread."""

    def __init__(self, server: Server) -> None:
        self._server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident(self._server))
            self._stop.wait(0.1)

    def __enter__(self) -> ResidentSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def resident(server: Server) -> int:
    from tests.launcher import triton_resident_bytes

    return triton_resident_bytes(server)


def settled_resident(server: Server) -> int:
    """The resident memory once a load's transient memory has been given back."""
    time.sleep(1.0)
    return resident(server)


def tree_pss(server: Server) -> int:
    """The PSS of the server's Triton and all its model processes."""
    from tests.launcher import triton_resident_bytes

    return triton_resident_bytes(server, proportional=True)


async def run_sequence(address: str, calls: list[str]) -> list[tuple[str, bool, float]]:
    """Each call in turn: its model, whether that model was loaded when it was sent, ms."""
    from reranker_client import AsyncRerankClient

    texts = workload("a")[:DOCUMENTS]
    timings = []
    async with AsyncRerankClient(address, timeout=600) as client:
        for model in calls:
            states = {m.name: m.state for m in await client.models()}
            start = time.perf_counter()
            await client.rank(QUERY, texts, model=model)
            timings.append((model, states[model] == "loaded", 1000 * (time.perf_counter() - start)))
    return timings


def start(repository: Path, workdir: Path, **settings: str) -> tuple[Server, float]:
    from engines import start_bench_server

    started = time.perf_counter()
    server = start_bench_server(repository, workdir, names()[0], **settings)
    return server, time.perf_counter() - started


def serving_time(repository: Path, workdir: Path, starts: int = 3) -> float:
    """Seconds from launch to SERVING, the median of ``starts`` starts: one start varies by
    a few tenths of a second."""
    from tests.launcher import stop_server

    times = []
    for _ in range(starts):
        server, seconds = start(repository, workdir, pin="")
        stop_server(server, 60)
        times.append(seconds)
    return statistics.median(times)


def catalog_row(workdir: Path) -> CatalogRow:
    from tests.launcher import stop_server

    repository = workdir / "catalog-repository"
    repository.mkdir(parents=True, exist_ok=True)
    build_catalog(repository)
    one = workdir / "catalog-one"
    if not one.is_dir():
        build_catalog_subset(repository, one, names()[:1])
    hot_only = workdir / "catalog-hot"
    if not hot_only.is_dir():
        build_catalog_subset(repository, hot_only, names()[:HOT])
    calls = sequence(random.Random(SEED))

    serving_one_s = serving_time(one, workdir / "catalog-server-one")
    serving_s = serving_time(repository, workdir / "catalog-server")

    # What max_loaded_models resident models take: the first ones loaded in turn, and what
    # each one after the first (pinned) added.
    server, _ = start(repository, workdir / "catalog-server-budget", pin="")
    try:
        asyncio.run(run_sequence(server.address, names()[:1]))
        first_resident, first_pss = settled_resident(server), tree_pss(server)
        asyncio.run(run_sequence(server.address, names()[1:MAX_LOADED]))
        budget_resident, budget_pss = settled_resident(server), tree_pss(server)
    finally:
        stop_server(server, 60)

    server, _ = start(
        repository, workdir / "catalog-server-run", pin="", max_loaded_models=str(MAX_LOADED)
    )
    try:
        with ResidentSampler(server) as sampler:
            timings = asyncio.run(run_sequence(server.address, calls))
    finally:
        stop_server(server, 60)

    server, _ = start(hot_only, workdir / "catalog-server-hot", pin="*")
    try:
        hot_calls = [model for model in calls if model in names()[:HOT]]
        # Sampled as the catalog's run is: the sampler's thread shares this process and its
        # 2 cores with the caller (without it in both, the hot calls read 10% apart).
        with ResidentSampler(server):
            alone = asyncio.run(run_sequence(server.address, hot_calls))
    finally:
        stop_server(server, 60)

    hot = [ms for model, loaded, ms in timings if model in names()[:HOT] and loaded]
    cold = [ms for _, loaded, ms in timings if not loaded]
    return CatalogRow(
        models=MODELS,
        max_loaded_models=MAX_LOADED,
        calls=CALLS,
        peak_resident_mb=sampler.peak / 2**20,
        budget_models_resident_mb=budget_resident / 2**20,
        added_per_model_mb=(budget_resident - first_resident) / (MAX_LOADED - 1) / 2**20,
        added_per_model_pss_mb=(budget_pss - first_pss) / (MAX_LOADED - 1) / 2**20,
        hot_p50_ms=statistics.median(hot),
        hot_alone_p50_ms=statistics.median(ms for _, _, ms in alone),
        cold_calls=len(cold),
        cold_p50_ms=statistics.median(cold),
        cold_p99_ms=p99(cold),
        serving_s=serving_s,
        serving_one_model_s=serving_one_s,
    )


def build_catalog_subset(repository: Path, target: Path, models: list[str]) -> None:
    """A repository of ``models`` alone, copied from the catalog (their shared tokenizer too)."""
    import shutil

    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    target.mkdir(parents=True)
    for name in models:
        config = text_format.Parse(
            (repository / name / "config.pbtxt").read_text(), mc.ModelConfig()
        )
        for part in (name, *(step.model_name for step in config.ensemble_scheduling.step)):
            if not (target / part).exists():
                shutil.copytree(repository / part, target / part)


def catalog_line(row: CatalogRow) -> str:
    return (
        f"catalog of {row.models}, {row.max_loaded_models} resident at most: peak resident "
        f"{row.peak_resident_mb:.0f} MB (4 models resident: {row.budget_models_resident_mb:.0f}; "
        f"each after the first {row.added_per_model_mb:.0f}, "
        f"PSS {row.added_per_model_pss_mb:.0f}); "
        f"hot p50 {row.hot_p50_ms:.1f} ms (hot models alone {row.hot_alone_p50_ms:.1f}); "
        f"{row.cold_calls} cold calls p50 {row.cold_p50_ms:.0f} ms p99 {row.cold_p99_ms:.0f}; "
        f"SERVING in {row.serving_s:.1f} s ({row.serving_one_model_s:.1f} s with one model)"
    )


def catalog_targets(machine: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The row's targets (name, measured, comparison, goal) in a run's report."""
    row = machine.get("catalog")
    if not row:
        return []

    def ratio(field: str, base: str) -> float:
        return float(row[field]) / float(row[base])

    return [
        (
            "catalog: peak resident / 4 models'",
            row["peak_resident_mb"] / row["budget_models_resident_mb"],
            "<=",
            1.05,
        ),
        (
            "catalog: MB (PSS) per added model, shared tokenizer",
            row.get("added_per_model_pss_mb", float("nan")),
            "<=",
            120,
        ),
        (
            "catalog: hot p50 / hot models alone",
            row["hot_p50_ms"] / row["hot_alone_p50_ms"],
            "<=",
            1.1,
        ),
        (
            "catalog: SERVING, 20 models / 1",
            row["serving_s"] / row["serving_one_model_s"],
            "<=",
            1.2,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--output", type=Path, help="write the row as JSON here")
    args = parser.parse_args()
    row = catalog_row(args.workdir)
    print(catalog_line(row))
    if args.output:
        args.output.write_text(json.dumps(asdict(row), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
