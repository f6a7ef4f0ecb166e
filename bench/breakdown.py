"""Where a rank call's time goes: one 100-document call of workload (a) at a time (and 4 at a
time) through the server, against ONNX Runtime in-process on the same graph, with Triton's
per-model statistics (queue and compute time of the tokenizer and the encoder).

Usage: python bench/breakdown.py [--model minilm] [--calls 10] [--set NAME=VALUE ...]
(``--set`` passes rank-service settings, e.g. ``--set max_rows_per_request=100``.)
Run ``make bench`` once first: it builds the models into build/bench/model_repository.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import tritonclient.grpc as triton_grpc
from engines import graph_engines, start_bench_server
from run import ROOT
from workloads import QUERY, WORKLOADS, workload

from tests.launcher import Server, stop_server

STAGES = ("queue", "compute_input", "compute_infer", "compute_output")


def triton_stats(url: str, models: list[str]) -> dict[str, dict[str, float]]:
    client = triton_grpc.InferenceServerClient(url)
    try:
        found: dict[str, dict[str, float]] = {}
        for name in models:
            (stats,) = client.get_inference_statistics(name).model_stats
            entry = {s: getattr(stats.inference_stats, s).ns / 1e6 for s in STAGES}
            entry["executions"] = stats.execution_count
            entry["rows"] = stats.inference_count
            entry["requests"] = stats.inference_stats.success.count
            found[name] = entry
        return found
    finally:
        client.close()


def profile(server: Server, model: str, documents: list[str], calls: int, callers: int) -> None:
    from reranker_client import RerankClient

    parts = [f"{model}__tokenizer", f"{model}__encoder"]
    url = server.triton_grpc
    with RerankClient(server.address, timeout=600) as client:
        client.rank(QUERY, documents, model=model)  # warm-up
        before = triton_stats(url, parts)
        start = time.perf_counter()
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(lambda _: client.rank(QUERY, documents, model=model), range(calls)))
        wall = time.perf_counter() - start
        after = triton_stats(url, parts)
    pairs = calls * len(documents)
    rate, per_call_ms = pairs / wall, 1000 * wall / calls
    print(f"\nserver, {callers} caller(s): {rate:.1f} pairs/s, {per_call_ms:.0f} ms/call")
    for name in parts:
        delta = {k: after[name][k] - before[name][k] for k in after[name]}
        per_call = {k: delta[k] / calls for k in STAGES}
        print(
            f"  {name:<20} per call: "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in per_call.items())
            + f"; {delta['requests'] / calls:.1f} requests, {delta['executions'] / calls:.1f} "
            f"executions, {delta['rows'] / max(1, delta['executions']):.1f} rows/execution"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--workload", default="a", choices=sorted(WORKLOADS))
    parser.add_argument("--set", action="append", default=[], help="rank-service setting")
    args = parser.parse_args()
    workdir = ROOT / "build" / "bench"
    repository = workdir / "model_repository"
    documents = workload(args.workload)

    from transformers import AutoTokenizer

    from reranker.backend.runtimes import OnnxRuntimeRunner

    tokenizer = AutoTokenizer.from_pretrained(workdir / "checkpoints" / "minilm")
    onnx = repository / f"{args.model}__encoder" / "1" / "model.onnx"
    engines = graph_engines(OnnxRuntimeRunner(onnx, 0), tokenizer, documents)
    engines["sorted"]()
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        engines["sorted"]()
        times.append(time.perf_counter() - start)
    best: Any = statistics.median(times)
    rate, per_call_ms = len(documents) / best, 1000 * best
    print(f"onnxruntime sorted in-process: {rate:.1f} pairs/s, {per_call_ms:.0f} ms/call")

    settings = dict(item.split("=", 1) for item in args.set)
    server = start_bench_server(repository, workdir / "breakdown", args.model, **settings)
    try:
        for callers in (1, 4):
            profile(server, args.model, documents, args.calls, callers)
    finally:
        stop_server(server, 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
