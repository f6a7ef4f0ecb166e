"""Memory per served model: copies of one model served side by side, each stub measured
(RSS, and PSS and USS, which split the pages shared between processes fairly) after a call
to every model, with 1 and with 4 models served."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from engines import build_current, served_parts, start_bench_server
from workloads import QUERY, workload

from tests.launcher import stop_server

MB = 1 << 20


def _stubs(root: psutil.Process) -> dict[str, dict[str, float]]:
    """Each Python-backend stub under ``root``, by Triton model: its memory in MB."""
    stubs: dict[str, dict[str, float]] = {}
    for process in root.children(recursive=True):
        if process.name() != "triton_python_backend_stub":
            continue
        model_file = Path(process.cmdline()[1])  # <repository>/<model>/<version>/model.py
        info = process.memory_full_info()
        stubs[model_file.parents[1].name] = {
            "rss": info.rss / MB,
            "pss": info.pss / MB,
            "uss": info.uss / MB,
        }
    return stubs


def served_memory(
    checkpoint: Path, workdir: Path, counts: Sequence[int] = (1, 4)
) -> list[dict[str, Any]]:
    """Per count of models served: each model's two stubs summed (RSS, PSS, USS; the median
    over the models) and the whole server's PSS (Triton, the rank service, every stub)."""
    from reranker_client import RerankClient

    from reranker.builder.builder import BuildOptions

    built = workdir / "memory-models"
    names = [f"copy{i}" for i in range(max(counts))]
    for name in names:
        build_current(checkpoint, BuildOptions(name=name), built)
    documents = workload("a")
    report = []
    for count in counts:
        repository = workdir / f"memory-repository-{count}"
        repository.mkdir(parents=True, exist_ok=True)
        for name in names[:count]:
            for part in served_parts(name):
                link = repository / part
                if link.is_symlink() and not link.exists():
                    link.unlink()  # left by an earlier run whose models moved
                if not link.exists():
                    link.symlink_to(built / part, target_is_directory=True)
        server = start_bench_server(repository, workdir / f"memory-server-{count}", names[0])
        try:
            with RerankClient(server.address, timeout=600) as client:
                for name in names[:count]:
                    client.rank(QUERY, documents, model=name)
            time.sleep(1.0)
            root = psutil.Process(server.process.pid)
            stubs = _stubs(root)
            everything = [root, *root.children(recursive=True)]
            total_pss = sum(p.memory_full_info().pss for p in everything) / MB
        finally:
            stop_server(server, 60)
        per_model = {
            kind: statistics.median(
                stubs[f"{name}__tokenizer"][kind] + stubs[f"{name}__encoder"][kind]
                for name in names[:count]
            )
            for kind in ("rss", "pss", "uss")
        }
        parts = {
            f"{stage}_rss": statistics.median(stubs[f"{n}__{stage}"]["rss"] for n in names[:count])
            for stage in ("tokenizer", "encoder")
        }
        row = {"models": count, **per_model, **parts, "server_pss": total_pss}
        print(
            f"  {count} model(s): per model RSS {row['rss']:.0f} MB (encoder "
            f"{row['encoder_rss']:.0f}, tokenizer {row['tokenizer_rss']:.0f}), PSS "
            f"{row['pss']:.0f}, USS {row['uss']:.0f}; whole server PSS {total_pss:.0f} MB",
            flush=True,
        )
        report.append(row)
    if len(report) > 1:
        first, last = report[0], report[-1]
        growth = (last["server_pss"] - first["server_pss"]) / (last["models"] - first["models"])
        last["growth_pss_per_model"] = growth
        print(f"  each model added: {growth:.0f} MB of PSS", flush=True)
    return report
