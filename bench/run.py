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
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from engines import (
    ROOT,
    SHORT_ROUNDS,
    CohereHttp,
    Infinity,
    build_current,
    causal_cases,
    engines,
    long_context_cases,
    precision_of,
    start_bench_server,
    suffix_for,
)
from flops import bert_flops, bf16_gemm_gflops, deberta_flops, gemm_peak_gflops, int8_gemm_gops
from harness import Result, interleave
from memory import served_memory
from report import cpu_facts, plot, show, table, target_lines, targets
from triton_perf import perf_analyzer
from vision import VISION_LAYERS, build_vision_model, page_images, time_split, vision_cases
from workloads import QUERY, WORKLOADS, workload

from reranker.contract.model import Precision
from tests.launcher import stop_server

# Layers of the causal-LM row's Qwen3-Reranker-0.6B shape: its 28 would take a quarter of an
# hour a round on this 2-core machine, so the row runs 4 (per-layer cost is what it measures).
CAUSAL_LAYERS = 4
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


def build_models(
    workdir: Path, deberta: bool, precisions: Sequence[Precision], causal: bool = True
) -> Path:
    """The benchmark's repository, each model rebuilt only when the build code or its options
    changed: the MiniLM cross-encoder in fp32, int8 and (of ``precisions``, what the CPU
    serves) bf16; DeBERTa-v2 of the mxbai-rerank-xsmall-v1 shape, 12 layers, in fp32 and
    bf16; the JinaBERT-like 8k model in fp32 and bf16; a causal-LM reranker of Qwen3-Reranker-0.6B's
    shape with ``CAUSAL_LAYERS`` layers."""
    from reranker.builder.builder import BuildOptions
    from reranker.builder.triton_configs import TritonTuning
    from tests.checkpoints import (
        QWEN3_0_6B,
        deberta_v2_cross_encoder,
        jina_bert_like_onnx,
        minilm_cross_encoder,
        qwen3_reranker,
        without_chat_template,
    )

    repository = workdir / "model_repository"
    checkpoints = workdir / "checkpoints"

    def variants(name: str, chosen: Sequence[Precision]) -> None:
        for precision in chosen:
            served = name + suffix_for(precision.value).replace(" ", "-")
            options = BuildOptions(name=served, precision=precision)
            build_current(checkpoints / name, options, repository)

    reduced = [p for p in precisions if p is Precision.BF16]
    if not (checkpoints / "minilm").is_dir():
        minilm_cross_encoder(checkpoints / "minilm")
    variants("minilm", precisions)
    if deberta:
        if not (checkpoints / "deberta").is_dir():
            deberta_v2_cross_encoder(checkpoints / "deberta", layers=12)
        variants("deberta", [Precision.FP32, *reduced])
    if not (checkpoints / "jina").is_dir():
        jina_bert_like_onnx(checkpoints / "jina")
    variants("jina", [Precision.FP32, *reduced])
    if causal:
        if not (checkpoints / "qwen3").is_dir():
            qwen3_reranker(checkpoints / "qwen3", layers=CAUSAL_LAYERS, shape=QWEN3_0_6B)
        if not (checkpoints / "qwen3-plain").is_dir():
            without_chat_template(checkpoints / "qwen3", checkpoints / "qwen3-plain")
        # Each served as built (the graph runs a group's shared prompt once) and with every
        # row run whole; the template-less one is the row whose prompt is a short query.
        whole = TritonTuning(shared_prefix=False)
        for checkpoint in ("qwen3", "qwen3-plain"):
            for served, tuning in ((checkpoint, TritonTuning()), (f"{checkpoint}-whole", whole)):
                options = BuildOptions(name=served, tuning=tuning)
                build_current(checkpoints / checkpoint, options, repository)
    return repository


def main() -> int:
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
    parser.add_argument("--show", type=Path, help="print the table of an earlier results.json")
    args = parser.parse_args()
    if args.show:
        return show(args.show)
    began = time.monotonic()

    def elapsed() -> str:
        return f"[{(time.monotonic() - began) / 60:4.1f} min]"

    from reranker_client import RerankClient
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer

    from reranker.backend.cpu import cpu_flags, cpu_precisions
    from reranker.builder.precision import runner_for

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
    vision_split: dict[str, float] = {}
    models = ["minilm"] + ([] if args.no_deberta else ["deberta"])
    results: list[Result] = []
    lengths: dict[str, dict[str, float]] = {}
    cpu = cpu_facts()
    print(f"CPU: {cpu['model']}; matrix features: {', '.join(cpu['features']) or 'none'}")
    gemm = [gemm_peak_gflops()]
    gemm_int8 = [int8_gemm_gops()]
    print(f"int8 GEMM: median {gemm_int8[0][0]:.0f} GOP/s, best {gemm_int8[0][1]:.0f}", flush=True)
    print(f"fp32 GEMM: median {gemm[0][0]:.0f} GFLOP/s, best {gemm[0][1]:.0f}", flush=True)
    gemm_bf16 = [bf16_gemm_gflops()] if bf16 else []
    if gemm_bf16:
        rate, best = gemm_bf16[0]
        print(f"bf16 GEMM: median {rate:.0f} GFLOP/s, best {best:.0f}", flush=True)

    def runners(model: str) -> dict[str, Any]:
        served = [m for m in (model, f"{model}-int8", f"{model}-bf16") if (repository / m).is_dir()]
        return {
            m: runner_for(
                repository / f"{m}__encoder" / "1" / "model.onnx", Precision(precision_of(m))
            )
            for m in served
        }

    # Every engine is up for the whole run, so each model and workload measures all engines
    # round by round (see ``interleave``).
    server = start_bench_server(repository, args.workdir / "server")
    infinity: dict[str, Infinity] = {}
    perf: dict[str, float] = {}
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
        for model in models:
            checkpoint = args.workdir / "checkpoints" / model
            tokenizer = AutoTokenizer.from_pretrained(checkpoint)
            cross_encoder = CrossEncoder(str(checkpoint), device="cpu")
            in_process = runners(model)
            for name in args.workloads if model == "minilm" else ["a"]:
                documents = workload(name)
                pair_lengths = [
                    len(i)
                    for i in tokenizer([QUERY] * len(documents), documents, truncation=True)[
                        "input_ids"
                    ]
                ]
                lengths[f"{model}/{name}"] = {
                    "mean": float(np.mean(pair_lengths)),
                    "max": float(max(pair_lengths)),
                }
                print(f"{elapsed()} {model} ({name})", flush=True)
                results += interleave(
                    engines(
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
                    ),
                    args.runs if (model, name) == ("minilm", "a") else min(args.runs, SHORT_ROUNDS),
                )
                gemm.append(gemm_peak_gflops())
                gemm_int8.append(int8_gemm_gops())
                gemm_bf16 += [bf16_gemm_gflops()] if bf16 else []
            del in_process
        if not args.no_long_context:
            print(f"{elapsed()} jina (long context)", flush=True)
            jina_tokenizer = AutoTokenizer.from_pretrained(args.workdir / "checkpoints" / "jina")
            lc_runners = runners("jina")
            results += interleave(
                long_context_cases(repository, client, lc_runners, jina_tokenizer),
                min(args.runs, SHORT_ROUNDS),
            )
            del lc_runners
        if not args.no_causal:
            print(f"{elapsed()} qwen3 (a, causal LM, {CAUSAL_LAYERS} layers)", flush=True)
            causal_runner = runners("qwen3-whole")["qwen3-whole"]
            results += interleave(
                causal_cases(
                    repository,
                    args.workdir / "checkpoints" / "qwen3",
                    client,
                    causal_runner,
                    workload("a")[:CAUSAL_DOCUMENTS],
                ),
                min(args.runs, CAUSAL_ROUNDS),
            )
            del causal_runner
        if vision_checkpoint is not None:
            layers = f"text, vision: {VISION_LAYERS[0]}, {VISION_LAYERS[1]} layers"
            print(f"{elapsed()} qwen3-vl (pages, multimodal, {layers})", flush=True)
            pages = page_images(VISION_PAGES)
            results += interleave(
                vision_cases(client, vision_checkpoint, pages), min(args.runs, VISION_ROUNDS)
            )
            vision_split = time_split(server.triton_grpc)
            print(
                "  per page served: processor (tokenizer model) "
                f"{vision_split['tokenizer_compute_s_per_page']:.3f} s, "
                f"model (encoder) {vision_split['encoder_compute_s_per_page']:.2f} s",
                flush=True,
            )
        print(f"{elapsed()} perf_analyzer", flush=True)
        binary = args.perf_analyzer / "perf_analyzer"
        if binary.exists():
            try:
                perf = perf_analyzer(binary, server.triton_grpc, workload("a"), args.workdir)
            except RuntimeError as error:  # recorded, not fatal: the other engines still count
                print(f"  perf_analyzer failed: {error}", flush=True)
                perf = {"error": str(error)[-500:]}  # type: ignore[dict-item]
            else:
                print(
                    f"  perf_analyzer (Triton ensemble alone, c=4): "
                    f"{perf['pairs_per_s']:.1f} pairs/s",
                    flush=True,
                )
    finally:
        stack.close()
        stop_server(server, 60)
        for peer in infinity.values():
            peer.stop()
    print(f"{elapsed()} memory per served model", flush=True)
    memory: list[dict[str, Any]] = []
    try:
        memory = served_memory(args.workdir / "checkpoints" / "minilm", args.workdir)
    except Exception as error:  # noqa: BLE001 - recorded; the measured rows still count
        print(f"  memory measurement failed: {error!r}", flush=True)
    median_gflops = statistics.median(rate for rate, _ in gemm)
    best_gflops = max(best for _, best in gemm)
    median_bf16 = statistics.median(rate for rate, _ in gemm_bf16) if gemm_bf16 else 0.0
    median_int8 = statistics.median(rate for rate, _ in gemm_int8)

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
        flops = (deberta_flops if result.model == "deberta" else bert_flops)(
            lengths[key]["mean"], 384, 12 if result.model == "deberta" else 6, 1536
        )
        if result.engine.endswith("bf16") and median_bf16:
            result.bound = "bf16"
            result.flop_fraction = result.pairs_per_s * flops / (median_bf16 * 1e9)
        elif result.engine.endswith("int8"):
            result.bound = "int8"
            result.flop_fraction = result.pairs_per_s * flops / (median_int8 * 1e9)
        else:
            result.flop_fraction = result.pairs_per_s * flops / (median_gflops * 1e9)

    print()
    print(table(results))
    bounds = {
        key: {
            "flops_per_pair": (deberta_flops if key.startswith("deberta") else bert_flops)(
                value["mean"], 384, 12 if key.startswith("deberta") else 6, 1536
            ),
        }
        for key, value in lengths.items()
    }
    for key, value in bounds.items():
        value["bound_pairs_per_s_median_gemm"] = median_gflops * 1e9 / value["flops_per_pair"]
        value["bound_pairs_per_s_best_gemm"] = best_gflops * 1e9 / value["flops_per_pair"]
        if median_bf16:
            value["bound_pairs_per_s_median_bf16_gemm"] = (
                median_bf16 * 1e9 / value["flops_per_pair"]
            )
        median, best = value["bound_pairs_per_s_median_gemm"], value["bound_pairs_per_s_best_gemm"]
        print(f"bound {key}: {median:.1f} pairs/s at the median GEMM rate ({best:.1f} at the best)")
    if "pairs_per_s" in perf:
        rate = perf["pairs_per_s"]
        print(f"perf_analyzer, Triton ensemble alone (minilm, a, c=4): {rate:.1f} pairs/s")
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "versions": _versions(),
        "gemm_gflops": {"median": median_gflops, "best": best_gflops},
        "cpu": cpu,
        "int8_gemm_gops": {
            "median": median_int8,
            "best": max(best for _, best in gemm_int8),
        },
        "memory": memory,
        "bf16_gemm_gflops": {
            "median": median_bf16,
            "best": max((best for _, best in gemm_bf16), default=0.0),
        },
        "token_lengths": lengths,
        "bounds": bounds,
        "perf_analyzer": perf,
        "vision_time_split": vision_split,
        "results": [asdict(r) for r in results],
    }
    checks = targets(results, report)
    report["targets"] = checks
    print(target_lines(checks))
    (args.output / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.output / "throughput.png")
    print(f"wrote {args.output / 'results.json'} and {args.output / 'throughput.png'}")
    print(f"{elapsed()} done")
    return 0


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
