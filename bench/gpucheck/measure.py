"""The check's steps, in order: build, GEMM, the server, then per model parity, workload (a),
the large call and the small callers; the causal-LM and multimodal rows; compile last."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gpucheck import models
from gpucheck.machine import MemorySampler, gemm_tflops, gpu_memory_by_model
from gpucheck.report import Results, targets
from gpucheck.rows import (
    causal_rows,
    compile_check,
    flops_per_pair,
    late_rows,
    parity,
    ranks_at,
    row_of,
    stage_times,
    triton_statistics,
    vision_rows,
)
from gpucheck.scale import CALL_TIMEOUT_S, CAUSAL, LATE, PARITY_BOUND, QUERY, VISION, Scale

TRITON_STARTUP_TIMEOUT_S = 240
# The compile check's most time, and the time it leaves before the deadline for the targets,
# the report and stopping the server.
COMPILE_BUDGET_S = 150
COMPILE_MARGIN_S = 45
MODEL_STEPS = ("parity", "workload a", "large call", "small callers")


def server_settings(scale: Scale, stub_python: str = "") -> dict[str, str]:
    """The rank service sized for the load the check sends: every row of the largest sweep in
    flight at once (twice over, for the canaries and a margin), the 1000-document call; its
    Triton's Python models run in ``stub_python``'s environment (the kit's numpy 1)."""
    in_flight = max(
        max(scale.concurrency) * scale.documents,
        scale.small_callers * scale.small_documents,
        scale.large_call,
    )
    settings = {
        "http_port": "-1",
        "max_documents_per_call": str(max(scale.large_call, scale.documents)),
        "max_rows_in_flight": str(2 * in_flight),
        "triton_python": stub_python,
    }
    if scale.device == "cpu":
        # On CPU the sweep's last callers wait for every row ahead of them (6,400 at the
        # GPU's sizes), a time that follows the CPU's speed: the dry run judges that each call
        # completes, so a call is bounded by the client's deadline alone, not the 60 s default.
        settings["inference_timeout_s"] = str(CALL_TIMEOUT_S)
    if scale.device == "gpu":
        # Loading seeded checkpoints onto the GPU takes seconds; a start that takes longer
        # than this has failed, and the lease is better spent on the steps that do not need
        # the server.
        settings["triton_startup_timeout_s"] = str(TRITON_STARTUP_TIMEOUT_S)
    return settings


def instances_of(work: Path, model: str, stage: str = "encoder") -> int:
    """The instances of ``model``'s encoder (or tokenizer), as its built configuration gives
    them (0: no such configuration)."""
    path = work / "model_repository" / f"{model}__{stage}" / "config.pbtxt"
    config = path.read_text() if path.is_file() else ""
    return sum(int(count) for count in re.findall(r"\bcount: (\d+)", config))


def large_call(
    model: str,
    call: Callable[[], object],
    documents: int,
    server: Any,
    results: Results,
    facts: dict[str, Any],
    scale: Scale,
    work: Path,
) -> None:
    """The large call's row, and the server's stages during it: with every request of the
    call queued, how idle the encoder's instances stay while each plans and pads on CPU."""
    from harness import Case, interleave

    case = Case("this server", model, "large", 1, call, documents)
    before, began = triton_statistics(server.triton_grpc), time.monotonic()
    results.rows += [row_of(r, "large") for r in interleave([case], scale.rounds)]
    wall_s = time.monotonic() - began
    after = triton_statistics(server.triton_grpc)
    instances = {stage: instances_of(work, model, stage) for stage in ("tokenizer", "encoder")}
    facts["stages_large_call"] = stage_times(before, after, model, wall_s, instances)


def _missing(model: str, checkpoints: dict[str, Path]) -> str:
    return f"{model} did not build" if model not in checkpoints else "the server did not start"


def planned_steps(scale: Scale) -> list[str]:
    """Every step of a whole run, in order: what a run cut short reports as skipped."""
    steps = [f"build {name}" for name in models.builders(scale)] + ["gemm", "server"]
    for shape in scale.shapes:
        steps += [f"{shape.name}: {part}" for part in MODEL_STEPS]
    steps.append(f"{models.other_instances(scale)[0]}: large call")
    return [
        *steps,
        f"{CAUSAL}: shared prompt",
        f"{VISION}: pages",
        f"{LATE}: late interaction",
        "targets",
        "compile",
    ]


def measure(scale: Scale, work: Path, results: Results, stub_python: str = "") -> None:
    import torch
    from harness import Case, interleave
    from reranker_client import RerankClient
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer
    from workloads import workload

    from tests.launcher import start_server, stop_server

    report, elapsed = results.report, results.elapsed
    unable = report.get("preflight", {}).get("cannot_run", {})
    checkpoints: dict[str, Path] = {}
    for name, build in models.builders(scale).items():
        if name in unable:
            results.skip(f"build {name}", unable[name])
            continue
        with results.step(f"build {name}"):
            checkpoints[name] = build(scale, work)
            print(f"{elapsed()} built {name}", flush=True)
            # What the GPU figures were measured with: each encoder's instance count.
            report.setdefault("encoder_instances", {})[name] = instances_of(work, name)
    tflops = 0.0
    with results.step("gemm"):
        tflops = report["gemm_tflops"] = gemm_tflops(scale)
        print(f"{elapsed()} GEMM {tflops:.1f} TFLOP/s ({scale.precision})", flush=True)
    whole = workload("a")
    if scale.document_words is not None:
        whole = [" ".join(text.split()[: scale.document_words]) for text in whole]
    all_documents = whole * (scale.large_call // 100 + 1)
    documents = all_documents[: scale.documents]
    large = all_documents[: scale.large_call]
    small = documents[: scale.small_documents]
    report.setdefault("models", {})
    torch_device = "cuda" if scale.device == "gpu" else "cpu"
    sampler = MemorySampler() if scale.device == "gpu" else None
    bound = PARITY_BOUND[scale.precision]
    with contextlib.ExitStack() as stack:
        if sampler is not None:
            stack.enter_context(sampler)
        client = server = None
        if "server" in unable:
            results.skip("server", unable["server"])
        elif checkpoints:
            with results.step("server"):
                server = start_server(
                    work / "model_repository",
                    work / "server",
                    next(iter(checkpoints)),
                    **server_settings(scale, stub_python),
                )
                stack.callback(stop_server, server, 60)
                print(f"{elapsed()} server up at {server.address}", flush=True)
                client = stack.enter_context(RerankClient(server.address, timeout=CALL_TIMEOUT_S))
        for shape in scale.shapes:
            model = shape.name
            if client is None or server is None or model not in checkpoints:
                for part in MODEL_STEPS:
                    results.skip(f"{model}: {part}", _missing(model, checkpoints))
                continue
            checkpoint = checkpoints[model]
            facts: dict[str, Any] = report["models"].setdefault(model, {"shape": asdict(shape)})
            cross_encoder: Any = None
            with results.step(f"{model}: parity"):
                tokenizer = AutoTokenizer.from_pretrained(checkpoint)
                encoded = tokenizer([QUERY] * len(documents), documents, truncation=True)
                mean_length = statistics.fmean(len(ids) for ids in encoded["input_ids"])
                facts["mean_tokens"] = mean_length
                facts["flops_per_pair"] = per_pair = flops_per_pair(shape, mean_length)
                if tflops:
                    facts["bound_pairs_per_s"] = tflops * 1e12 / per_pair
                cross_encoder = CrossEncoder(str(checkpoint), device=torch_device)
                checks = facts["parity"] = {
                    "fp32 reference": parity(client, cross_encoder, model, documents, bound)
                }
                if scale.precision != "fp32":
                    # A torch module itself from sentence-transformers 4 on; a wrapper before.
                    is_module = isinstance(cross_encoder, torch.nn.Module)
                    half = cross_encoder if is_module else cross_encoder.model
                    half.to(torch.float16 if scale.precision == "fp16" else torch.bfloat16)
                    checks[f"{scale.precision} reference"] = parity(
                        client, cross_encoder, model, documents, bound
                    )
                print(f"{elapsed()} {model} parity {json.dumps(checks)}", flush=True)

            def served(docs: list[str], name: str = model) -> Callable[[], object]:
                return lambda: client.rank(QUERY, docs, model=name)

            n = len(documents)
            with results.step(f"{model}: workload a"):
                cases = [
                    Case(
                        f"CrossEncoder.rank bs={b}",
                        model,
                        "a",
                        1,
                        ranks_at(cross_encoder, documents, b),
                        n,
                    )
                    for b in scale.batch_sizes
                    if cross_encoder is not None
                ]
                cases += [
                    Case("this server", model, "a", c, served(documents), n)
                    for c in scale.concurrency
                ]
                before = triton_statistics(server.triton_grpc)
                found = [row_of(r, "a") for r in interleave(cases, scale.rounds)]
                after = triton_statistics(server.triton_grpc)
                per_pair = facts.get("flops_per_pair", 0.0)
                for row in found:
                    if tflops:
                        row.flop_fraction = row.pairs_per_s * per_pair / (tflops * 1e12)
                results.rows += found
                facts["stages_workload_a"] = stage_times(before, after, model)
            with results.step(f"{model}: large call"):
                large_call(model, served(large), len(large), server, results, facts, scale, work)
            with results.step(f"{model}: small callers"):
                case = Case(
                    "this server", model, "small", scale.small_callers, served(small), len(small)
                )
                results.rows += [row_of(r, "small") for r in interleave([case], scale.rounds * 2)]
            del cross_encoder
            if scale.device == "gpu":
                torch.cuda.empty_cache()
        variant = models.other_instances(scale)[0]
        if client is None or server is None or variant not in checkpoints:
            results.skip(f"{variant}: large call", _missing(variant, checkpoints))
        else:
            with results.step(f"{variant}: large call"):
                facts = report["models"].setdefault(variant, {})
                ranks = functools.partial(client.rank, QUERY, large, model=variant)
                large_call(variant, ranks, len(large), server, results, facts, scale, work)
        if client is None or CAUSAL not in checkpoints:
            results.skip(f"{CAUSAL}: shared prompt", _missing(CAUSAL, checkpoints))
        else:
            with results.step(f"{CAUSAL}: shared prompt"):
                results.rows += causal_rows(
                    client, checkpoints[CAUSAL], all_documents[: scale.causal_documents], scale
                )
        if client is None or VISION not in checkpoints:
            results.skip(f"{VISION}: pages", _missing(VISION, checkpoints))
        else:
            with results.step(f"{VISION}: pages"):
                rows, checks = vision_rows(client, checkpoints[VISION], scale)
                results.rows += rows
                report["models"][VISION] = {"parity": checks}
        if client is None or LATE not in checkpoints:
            results.skip(f"{LATE}: late interaction", _missing(LATE, checkpoints))
        else:
            with results.step(f"{LATE}: late interaction"):
                documents = all_documents[: scale.late_documents]
                rows, checks = late_rows(client, checkpoints[LATE], documents, scale)
                results.rows += rows
                report["models"][LATE] = {
                    "parity": {"fp32 reference": checks},
                    "reference_engine": "MultiVectorEncoder",
                }
        if sampler is not None and server is not None:
            # Every model of the check has run by now: each holds its context and weights.
            report["gpu_memory_by_model_mib"] = gpu_memory_by_model()
    if sampler is not None:
        report["gpu_memory_peak_mib"] = sampler.peak_mib
        report["gpu_memory_baseline_mib"] = sampler.baseline_mib
    # The targets need nothing of the compile check: judged before it, they survive its
    # being cut short.
    with results.step("targets"):
        report["targets"] = targets(results.rows, scale, report)
    first = scale.shapes[0].name
    # Last, as it may take longest: its modes run while the deadline leaves time for them.
    budget_s = min(COMPILE_BUDGET_S, results.time_left() - COMPILE_MARGIN_S)
    if first in checkpoints and budget_s <= 0:
        results.skip("compile", f"{results.time_left():.0f} s left before the deadline")
    elif first in checkpoints:
        with results.step("compile"):
            print(f"{elapsed()} torch.compile check", flush=True)
            report["compile"] = compile_check(checkpoints[first], scale, budget_s=budget_s)
