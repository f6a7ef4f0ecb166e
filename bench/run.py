"""Side-by-side reranking benchmark: the same checkpoints and inputs through this server and
the alternatives, on this machine, in one run (``make bench``).

Engines: sentence-transformers ``CrossEncoder.rank`` in-process; ONNX Runtime in-process on
the served ONNX file (all documents in one padded batch, and length-sorted batches); this
server through ``RerankClient.rank``; Infinity serving the same checkpoint; and
``perf_analyzer`` against the Triton ensemble alone. Prints a table, writes JSON and a plot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from catalog import catalog_line, catalog_row
from engines import (
    ROOT,
    SHORT_ROUNDS,
    CohereHttp,
    Infinity,
    causal_cases,
    engines,
    long_context_cases,
    precision_of,
    start_bench_server,
)
from flops import GemmRates, flops_per_pair
from harness import Result, interleave
from late import late_line, late_row
from memory import served_memory
from models import CAUSAL_LAYERS, build_models
from report import cpu_facts, plot, show, table, target_lines, targets
from shared import shared_service_rows, shared_service_table
from triton_perf import perf_analyzer
from vision import VISION_LAYERS, build_vision_model, page_images, time_split, vision_cases
from workloads import QUERY, WORKLOADS, workload

from reranker.contract.model import Precision
from tests.launcher import stop_server

# A call of the causal row carries this many documents, and the row takes this many rounds:
# a round of the row runs every case on 4 x 32 pairs, about half a minute here.
CAUSAL_DOCUMENTS = 32
CAUSAL_ROUNDS = 3
# Pages a call of the multimodal row carries, and the row's rounds: a round runs
# CrossEncoder and the server at c=1 and c=4 on 6 x 12 pages, about 3 minutes here (a page
# costs its model about 2-2.5 s with one text and one vision layer; 20 pages a call took the
# whole benchmark past 20 minutes on a slow day). A call still holds three of the server's
# runs of 4096 tokens (about 4 pages each).
VISION_PAGES = 12
VISION_ROUNDS = 1


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=ROOT / "build" / "bench")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--infinity-venv", type=Path, default=ROOT / "build" / "infinity-venv")
    parser.add_argument("--perf-analyzer", type=Path, default=ROOT / "build" / "perf_analyzer")
    parser.add_argument("--no-deberta", action="store_true")
    parser.add_argument(
        "--workloads",
        nargs="*",
        choices=sorted(WORKLOADS),
        default=sorted(WORKLOADS),
        help="MiniLM workloads to measure (default: all; none: no MiniLM rows)",
    )
    parser.add_argument("--no-long-context", action="store_true")
    parser.add_argument("--no-causal", action="store_true", help="skip the causal-LM row")
    parser.add_argument("--no-vision", action="store_true", help="skip the multimodal row")
    parser.add_argument(
        "--no-shared", action="store_true", help="skip the shared-service row (bench/shared.py)"
    )
    parser.add_argument(
        "--no-catalog", action="store_true", help="skip the catalog row (bench/catalog.py)"
    )
    parser.add_argument(
        "--no-late", action="store_true", help="skip the late-interaction row (bench/late.py)"
    )
    parser.add_argument("--show", type=Path, help="print the table of an earlier results.json")
    return parser.parse_args()


@dataclass
class _Run:
    """What one benchmark run measures, as it goes."""

    args: argparse.Namespace
    repository: Path
    gemm: GemmRates
    began: float = field(default_factory=time.monotonic)
    results: list[Result] = field(default_factory=list)
    # Each model/workload's pair lengths in tokens (mean, max).
    lengths: dict[str, dict[str, float]] = field(default_factory=dict)
    perf: dict[str, Any] = field(default_factory=dict)
    vision_split: dict[str, float] = field(default_factory=dict)
    shared_service: list[dict[str, Any]] = field(default_factory=list)

    def elapsed(self) -> str:
        return f"[{(time.monotonic() - self.began) / 60:4.1f} min]"

    def runners(self, model: str) -> dict[str, Any]:
        """In-process runners of the served files of ``model`` and its reduced precisions."""
        from reranker.builder.precision import runner_for

        names = (model, f"{model}-int8", f"{model}-bf16")
        served = [m for m in names if (self.repository / m).is_dir()]
        return {
            m: runner_for(
                self.repository / f"{m}__encoder" / "1" / "model.onnx", Precision(precision_of(m))
            )
            for m in served
        }


def main() -> int:
    args = _arguments()
    if args.show:
        return show(args.show)
    from reranker.backend.cpu import cpu_flags, cpu_precisions

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.output.mkdir(parents=True, exist_ok=True)
    precisions = cpu_precisions(cpu_flags())
    bf16 = Precision.BF16 in precisions
    repository = build_models(
        args.workdir, deberta=not args.no_deberta, precisions=precisions, causal=not args.no_causal
    )
    vision_checkpoint = (
        None if args.no_vision else build_vision_model(args.workdir / "checkpoints", repository)
    )
    cpu = cpu_facts()
    print(f"CPU: {cpu['model']}; matrix features: {', '.join(cpu['features']) or 'none'}")
    run = _Run(args, repository, GemmRates(bf16))
    run.gemm.print_first()
    _measure_engines(run, bf16, vision_checkpoint)
    print(f"{run.elapsed()} memory per served model", flush=True)
    memory: list[dict[str, Any]] = []
    try:
        memory = served_memory(args.workdir / "checkpoints" / "minilm", args.workdir)
    except Exception as error:  # noqa: BLE001 - recorded; the measured rows still count
        print(f"  memory measurement failed: {error!r}", flush=True)
    catalog: dict[str, Any] = {}
    if not args.no_catalog:
        print(f"{run.elapsed()} catalog (20 models, 4 resident)", flush=True)
        row = catalog_row(args.workdir)
        print(f"  {catalog_line(row)}", flush=True)
        catalog = asdict(row)
    late: dict[str, Any] = {}
    if not args.no_late:
        print(f"{run.elapsed()} late interaction (ColBERT, 100 documents a call)", flush=True)
        late = late_row(args.workdir)
        print(f"  {late_line(late)}", flush=True)
    _attach_flop_fractions(run.results, run.lengths, run.gemm)
    print()
    print(table(run.results))
    if run.shared_service:
        print(shared_service_table(run.shared_service))
    bounds = _bounds(run.lengths, run.gemm)
    if "pairs_per_s" in run.perf:
        rate = run.perf["pairs_per_s"]
        print(f"perf_analyzer, Triton ensemble alone (minilm, a, c=4): {rate:.1f} pairs/s")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "versions": _versions(),
        "cpu": cpu,
        "memory": memory,
        **run.gemm.report(),
        "token_lengths": run.lengths,
        "bounds": bounds,
        "perf_analyzer": run.perf,
        "vision_time_split": run.vision_split,
        "shared_service": run.shared_service,
        "catalog": catalog,
        "late_interaction": late,
        "results": [asdict(r) for r in run.results],
    }
    checks = targets(run.results, report)
    report["targets"] = checks
    print(target_lines(checks))
    (args.output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(run.results, args.output / "throughput.png")
    print(f"wrote {args.output / 'results.json'} and {args.output / 'throughput.png'}")
    print(f"{run.elapsed()} done")
    return 0


def _measure_engines(run: _Run, bf16: bool, vision_checkpoint: Path | None) -> None:
    """Every row, with every engine up for the whole run, so each model and workload
    measures all engines round by round (see ``interleave``)."""
    from reranker_client import RerankClient

    args = run.args
    server = start_bench_server(run.repository, args.workdir / "server")
    infinity: dict[str, Infinity] = {}
    stack = contextlib.ExitStack()
    try:
        if (args.infinity_venv / "bin" / "infinity_emb").exists():
            for dtype in ("float32", "bfloat16") if bf16 else ("float32",):
                infinity[dtype] = Infinity(
                    args.infinity_venv,
                    args.workdir / "checkpoints" / "minilm",
                    args.workdir / f"infinity-{dtype}.log",
                    dtype,
                )
        client = stack.enter_context(RerankClient(server.address, timeout=600))
        http = CohereHttp(server.http_url)
        stack.callback(http.close)
        _cross_encoder_rows(run, client, http, infinity)
        if not args.no_long_context:
            _long_context_rows(run, client)
        if not args.no_causal:
            _causal_rows(run, client)
        if vision_checkpoint is not None:
            _vision_rows(run, client, vision_checkpoint, server.triton_grpc)
        if not args.no_shared:
            print(f"{run.elapsed()} shared service (minilm, a)", flush=True)
            rows = shared_service_rows(run.repository, server.triton_grpc, args.workdir)
            run.shared_service = [asdict(row) for row in rows]
        run.perf = _perf_analyzer(run, server.triton_grpc)
    finally:
        stack.close()
        stop_server(server, 60)
        for peer in infinity.values():
            peer.stop()


def _cross_encoder_rows(
    run: _Run, client: Any, http: CohereHttp, infinity: dict[str, Infinity]
) -> None:
    """MiniLM on every workload, DeBERTa on (a): every engine, every precision served."""
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    args = run.args
    for model in ["minilm"] + ([] if args.no_deberta else ["deberta"]):
        checkpoint = args.workdir / "checkpoints" / model
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        cross_encoder = CrossEncoder(str(checkpoint), device="cpu")
        in_process = run.runners(model)
        for name in args.workloads if model == "minilm" else ["a"]:
            documents = workload(name)
            encoded = tokenizer([QUERY] * len(documents), documents, truncation=True)
            pair_lengths = [len(i) for i in encoded["input_ids"]]
            run.lengths[f"{model}/{name}"] = {
                "mean": float(np.mean(pair_lengths)),
                "max": float(max(pair_lengths)),
            }
            print(f"{run.elapsed()} {model} ({name})", flush=True)
            cases = engines(
                model,
                name,
                documents,
                cross_encoder,
                tokenizer,
                in_process,
                client,
                http,
                infinity,
                args.concurrency,
            )
            rounds = args.runs if (model, name) == ("minilm", "a") else min(args.runs, SHORT_ROUNDS)
            run.results += interleave(cases, rounds)
            run.gemm.sample()
        del in_process


def _long_context_rows(run: _Run, client: Any) -> None:
    from transformers import AutoTokenizer

    print(f"{run.elapsed()} jina (long context)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(run.args.workdir / "checkpoints" / "jina")
    cases = long_context_cases(run.repository, client, run.runners("jina"), tokenizer)
    run.results += interleave(cases, min(run.args.runs, SHORT_ROUNDS))


def _causal_rows(run: _Run, client: Any) -> None:
    print(f"{run.elapsed()} qwen3 (a, causal LM, {CAUSAL_LAYERS} layers)", flush=True)
    cases = causal_cases(
        run.repository,
        run.args.workdir / "checkpoints" / "qwen3",
        client,
        run.runners("qwen3-whole")["qwen3-whole"],
        workload("a")[:CAUSAL_DOCUMENTS],
    )
    run.results += interleave(cases, min(run.args.runs, CAUSAL_ROUNDS))


def _vision_rows(run: _Run, client: Any, checkpoint: Path, triton_grpc: str) -> None:
    layers = f"text, vision: {VISION_LAYERS[0]}, {VISION_LAYERS[1]} layers"
    print(f"{run.elapsed()} qwen3-vl (pages, multimodal, {layers})", flush=True)
    cases = vision_cases(client, checkpoint, page_images(VISION_PAGES))
    run.results += interleave(cases, min(run.args.runs, VISION_ROUNDS))
    run.vision_split = time_split(triton_grpc)
    print(
        "  per page served: processor (tokenizer model) "
        f"{run.vision_split['tokenizer_compute_s_per_page']:.3f} s, "
        f"model (encoder) {run.vision_split['encoder_compute_s_per_page']:.2f} s",
        flush=True,
    )


def _perf_analyzer(run: _Run, triton_grpc: str) -> dict[str, Any]:
    """The Triton ensemble alone at c=4 (recorded, not fatal, when perf_analyzer fails)."""
    print(f"{run.elapsed()} perf_analyzer", flush=True)
    binary = run.args.perf_analyzer / "perf_analyzer"
    if not binary.exists():
        return {}
    try:
        perf: dict[str, Any] = perf_analyzer(binary, triton_grpc, workload("a"), run.args.workdir)
    except RuntimeError as error:
        print(f"  perf_analyzer failed: {error}", flush=True)
        return {"error": str(error)[-500:]}
    print(
        f"  perf_analyzer (Triton ensemble alone, c=4): {perf['pairs_per_s']:.1f} pairs/s",
        flush=True,
    )
    return perf


def _attach_flop_fractions(
    results: list[Result], lengths: dict[str, dict[str, float]], gemm: GemmRates
) -> None:
    """Each result's ratio to ONNX Runtime's naive loop on its workload, and its fraction of
    the bound of its precision's median GEMM rate."""
    for result in results:
        naive = next(
            (
                r.pairs_per_s
                for r in results
                if r.engine == "onnxruntime naive"
                and r.model == result.model
                and r.workload == result.workload
            ),
            None,
        )
        key = f"{result.model}/{result.workload}"
        if naive is None or key not in lengths:
            continue  # the long-context row compares served with in-process only
        result.ratio_to_ort_naive = result.pairs_per_s / naive
        flops = flops_per_pair(key, lengths[key]["mean"])
        if result.engine.endswith("bf16") and gemm.median_bf16:
            result.bound = "bf16"
            result.flop_fraction = result.pairs_per_s * flops / (gemm.median_bf16 * 1e9)
        elif result.engine.endswith("int8"):
            result.bound = "int8"
            result.flop_fraction = result.pairs_per_s * flops / (gemm.median_int8 * 1e9)
        else:
            result.flop_fraction = result.pairs_per_s * flops / (gemm.median_fp32 * 1e9)


def _bounds(lengths: dict[str, dict[str, float]], gemm: GemmRates) -> dict[str, dict[str, float]]:
    """Each workload's bound in pairs/s at the median and best GEMM rates; printed."""
    bounds: dict[str, dict[str, float]] = {}
    for key, value in lengths.items():
        flops = flops_per_pair(key, value["mean"])
        bound = bounds[key] = {
            "flops_per_pair": flops,
            "bound_pairs_per_s_median_gemm": gemm.median_fp32 * 1e9 / flops,
            "bound_pairs_per_s_best_gemm": gemm.best_fp32 * 1e9 / flops,
        }
        if gemm.median_bf16:
            bound["bound_pairs_per_s_median_bf16_gemm"] = gemm.median_bf16 * 1e9 / flops
        median, best = bound["bound_pairs_per_s_median_gemm"], bound["bound_pairs_per_s_best_gemm"]
        print(f"bound {key}: {median:.1f} pairs/s at the median GEMM rate ({best:.1f} at the best)")
    return bounds


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = [
        "onnxruntime",
        "torch",
        "transformers",
        "sentence-transformers",
        "tokenizers",
        "nvidia-pytriton",
        "openvino",
        "fastapi",
        "uvicorn",
        "httptools",
    ]
    return {name: version(name) for name in names}


if __name__ == "__main__":
    sys.exit(main())
