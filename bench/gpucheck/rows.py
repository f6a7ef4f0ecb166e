"""The measured rows: what each engine did, Triton's per-stage times, parity with CrossEncoder,
and the causal-LM, multimodal and compile rows."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpucheck.scale import (
    CAUSAL,
    CAUSAL_INSTRUCTION,
    LATE,
    LATE_CALLS_PER_RUN,
    LATE_PARITY_BOUND,
    PARITY_BOUND,
    QUERY,
    VISION,
    Scale,
    Shape,
)


@dataclass
class Row:
    engine: str
    model: str
    case: str
    concurrency: int
    pairs_per_s: float
    p50_ms: float
    p99_ms: float
    flop_fraction: float = 0.0
    run_pairs_per_s: list[float] = field(default_factory=list)
    paired_ratio: float = 0.0


def row_of(result: Any, case: str) -> Row:
    return Row(
        result.engine,
        result.model,
        case,
        result.concurrency,
        result.pairs_per_s,
        result.p50_ms,
        result.p99_ms,
        run_pairs_per_s=result.run_pairs_per_s,
    )


def triton_statistics(triton_address: str) -> dict[str, dict[str, float]]:
    """Cumulative per-model counts and times (ns) from Triton's statistics API."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(triton_address)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    out = {}
    for model in stats.get("model_stats", []):
        inference = model.get("inference_stats", {})
        out[model["name"]] = {
            "inferences": float(model.get("inference_count", 0)),
            "executions": float(model.get("execution_count", 0)),
            "requests": float(inference.get("success", {}).get("count", 0)),
            "queue_ns": float(inference.get("queue", {}).get("ns", 0)),
            "compute_ns": float(inference.get("compute_infer", {}).get("ns", 0)),
            # Once per execution (the inference statistics count an execution once for each
            # request merged into it).
            "execution_compute_ns": sum(
                float(batch.get("compute_infer", {}).get("ns", 0))
                for batch in model.get("batch_stats", [])
            ),
        }
    return out


def stage_times(
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    model: str,
    wall_s: float = 0.0,
    instances: dict[str, int] | None = None,
) -> dict[str, dict[str, float]]:
    """What the tokenizer and encoder of ``model`` did between two snapshots ``wall_s``
    apart: rows per execution (how well requests merged), queue time per request, compute per
    execution and per row, and the fraction of the time its instances (``instances`` by
    stage, default 1) were idle."""
    times = {}
    for stage in ("tokenizer", "encoder"):
        name = f"{model}__{stage}"
        delta = {k: after[name][k] - before.get(name, {}).get(k, 0.0) for k in after[name]}
        requests, executions = max(delta["requests"], 1), max(delta["executions"], 1)
        rows = max(delta["inferences"], 1)
        executing_ns = delta.get("execution_compute_ns", 0.0) or delta["compute_ns"]
        times[stage] = {
            "rows_per_execution": delta["inferences"] / executions,
            "queue_ms_per_request": delta["queue_ns"] / requests / 1e6,
            "compute_ms_per_execution": executing_ns / executions / 1e6,
            "compute_us_per_row": executing_ns / rows / 1e3,
        }
        if wall_s > 0:
            count = (instances or {}).get(stage, 1)
            busy = executing_ns / 1e9 / (wall_s * count)
            times[stage]["instances"] = count
            times[stage]["idle_fraction"] = max(0.0, 1.0 - busy)
    return times


def order_kept(served: list[float], reference: list[float], bound: float) -> bool:
    """Whether the served scores rank the reference's top ten as the reference does, against
    every document: each of them above every document whose reference score is lower by more
    than twice ``bound``. (Closer pairs are ties that scores within the bound may order
    either way.)"""
    top = sorted(range(len(reference)), key=lambda i: -reference[i])[:10]
    return all(
        served[i] > served[j]
        for i in top
        for j in range(len(reference))
        if reference[i] - reference[j] > 2 * bound
    )


def parity(
    client: Any, cross_encoder: Any, model: str, documents: list[Any], bound: float
) -> dict[str, Any]:
    """Served scores against CrossEncoder's on the same documents: passed when every score
    is finite, within ``bound``, and the top ten are ranked as the reference ranks them where
    the reference tells them apart (:func:`order_kept`)."""
    served = client.rank(QUERY, documents, model=model)
    served_scores = [math.nan] * len(documents)
    for result in served:
        served_scores[result["corpus_id"]] = result["score"]
    reference = [float(s) for s in cross_encoder.predict([(QUERY, d) for d in documents])]

    def top(scores: list[float]) -> list[int]:
        return sorted(range(len(scores)), key=lambda i: -scores[i])[:10]

    finite = all(math.isfinite(v) for v in (*served_scores, *reference))
    # A NaN makes every comparison false: it must fail the check, not hide inside max().
    worst = (
        max(abs(a - b) for a, b in zip(served_scores, reference, strict=True)) if finite else None
    )
    kept = finite and order_kept(served_scores, reference, bound)
    return {
        "pairs": len(documents),
        "finite": finite,
        "max_abs_diff": worst,
        "bound": bound,
        "top10_identical": top(served_scores) == top(reference),
        "order_kept": kept,
        "passed": finite and worst is not None and worst <= bound and kept,
    }


def flops_per_pair(shape: Shape, mean_length: float) -> float:
    from flops import bert_flops

    return bert_flops(mean_length, shape.hidden, shape.layers, shape.intermediate)


def compile_check(checkpoint: Path, scale: Scale, budget_s: float) -> dict[str, Any]:
    """In-process, one GPU: the PyTorch runner eager and under ``torch.compile`` (default
    mode, and reduce-overhead: CUDA graphs), on padded batches of two lengths."""
    import numpy as np

    from reranker.backend.torch_runtime import TorchRunner
    from reranker.contract.model import Precision
    from reranker.contract.parameters import TorchCompile as Compile

    if scale.device != "gpu":
        return {"skipped": "on CPU"}
    # Two served batch shapes, and one row alone (a one-document call's shape).
    shapes = [(64, 128), (32, 256), (1, 128)]
    results: dict[str, Any] = {}
    started = time.monotonic()
    last_mode_s = 0.0
    for mode in (Compile.EAGER, Compile.DEFAULT, Compile.REDUCE_OVERHEAD):
        # A mode begins only where one as long as the last fits in what is left.
        if time.monotonic() - started + last_mode_s > budget_s:
            results[mode.value] = "skipped: over the time budget"
            continue
        mode_started = time.monotonic()
        runner = TorchRunner(
            checkpoint,
            bi_encoder=False,
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            device="cuda:0",
            dtype=Precision(scale.precision),
            compile_mode=mode,
        )
        measured: dict[str, float] = {}
        for rows, length in shapes:
            feeds = {
                "input_ids": np.full((rows, length), 1000, dtype=np.int64),
                "attention_mask": np.ones((rows, length), dtype=np.int64),
                "token_type_ids": np.zeros((rows, length), dtype=np.int64),
            }
            # The runner compiled at load, on served shapes: a first run of a new shape that
            # takes long is a recompilation a served call would wait for.
            start = time.perf_counter()
            runner.run(feeds)
            measured[f"{rows}x{length} first run s"] = time.perf_counter() - start
            for _ in range(2):  # captures graphs
                runner.run(feeds)
            start = time.perf_counter()
            for _ in range(20):
                runner.run(feeds)
            measured[f"{rows}x{length} rows/s"] = 20 * rows / (time.perf_counter() - start)
        results[mode.value] = measured
        del runner
        last_mode_s = time.monotonic() - mode_started
    return results


def causal_rows(client: Any, checkpoint: Path, documents: list[str], scale: Scale) -> list[Row]:
    """A causal-LM reranker (Qwen3-Reranker-0.6B shape) behind its default prompt at
    concurrency 4: the server with each group's shared prompt run once, paired round by
    round with the same model built to run rows whole, and ``CrossEncoder.rank`` on the
    same device and precision."""
    from functools import partial

    import torch
    from harness import Case, interleave
    from sentence_transformers import CrossEncoder

    device = "cuda" if scale.device == "gpu" else "cpu"
    cross_encoder = CrossEncoder(str(checkpoint), device=device)
    if scale.device == "gpu":
        is_module = isinstance(cross_encoder, torch.nn.Module)
        (cross_encoder if is_module else cross_encoder.model).to(torch.bfloat16)
    n = len(documents)

    def served(model: str) -> Callable[[], object]:
        return partial(client.rank, QUERY, documents, model=model, instruction=CAUSAL_INSTRUCTION)

    whole = Case("this server, rows whole", CAUSAL, "causal", 4, served(f"{CAUSAL}-whole"), n)
    cases = [
        Case(
            "CrossEncoder.rank",
            CAUSAL,
            "causal",
            1,
            lambda: cross_encoder.rank(QUERY, documents, prompt=CAUSAL_INSTRUCTION),
            n,
        ),
        whole,
        Case("this server", CAUSAL, "causal", 4, served(CAUSAL), n, partner=whole),
    ]
    rows = []
    for result in interleave(cases, scale.rounds):
        row = row_of(result, "causal")
        row.paired_ratio = result.paired_ratio
        rows.append(row)
    return rows


class _MaxSimReference:
    """``MultiVectorEncoder`` answering :func:`parity`'s ``predict``: one call's MaxSim."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def predict(self, pairs: list[tuple[str, str]]) -> list[float]:
        (query,) = {q for q, _ in pairs}
        vectors = self.encoder.encode_document([d for _, d in pairs])
        similarity = self.encoder.similarity(self.encoder.encode_query([query]), vectors)
        return [float(s) for s in similarity[0].float().cpu()]

    def rank(self, documents: list[str]) -> object:
        return self.predict([(QUERY, d) for d in documents])


def late_rows(
    client: Any, checkpoint: Path, documents: list[str], scale: Scale
) -> tuple[list[Row], dict[str, Any]]:
    """A late-interaction reranker (ColBERT) on one call of ``documents``: sentence-transformers'
    ``MultiVectorEncoder`` (``encode_query`` + ``encode_document`` + ``similarity``) on the same
    device, and this server at concurrency 1 and 4; and its MaxSim scores against
    ``MultiVectorEncoder``'s in fp32."""
    from functools import partial

    import torch
    from harness import Case, interleave
    from sentence_transformers import MultiVectorEncoder

    device = "cuda" if scale.device == "gpu" else "cpu"
    encoder = MultiVectorEncoder(str(checkpoint), device=device)
    reference = _MaxSimReference(encoder)
    checks = parity(client, reference, LATE, documents, LATE_PARITY_BOUND[scale.precision])
    if scale.precision != "fp32":
        # Timed in the precision the server serves, as the other rows' references are.
        encoder.to(torch.float16 if scale.precision == "fp16" else torch.bfloat16)
    n = len(documents)
    served = partial(client.rank, QUERY, documents, model=LATE)
    # Several calls a run: one call of this model takes tens of milliseconds on a GPU.
    calls = LATE_CALLS_PER_RUN
    cases = [
        Case(
            "MultiVectorEncoder",
            LATE,
            "late",
            1,
            partial(reference.rank, documents),
            n,
            calls=calls,
        ),
        *(Case("this server", LATE, "late", c, served, n, calls=calls) for c in (1, 4)),
    ]
    rows = [row_of(result, "late") for result in interleave(cases, scale.rounds)]
    del encoder, reference
    if scale.device == "gpu":
        torch.cuda.empty_cache()
    return rows, checks


def vision_rows(client: Any, checkpoint: Path, scale: Scale) -> tuple[list[Row], dict[str, Any]]:
    """A vision-language reranker (Qwen3-VL-2B shape) ranking page-like images against a text
    query: ``CrossEncoder.rank`` on the same device and precision, and this server at
    concurrency 1 and 4; and its scores against CrossEncoder's."""
    import io
    from functools import partial

    import torch
    from harness import Case, interleave
    from PIL import Image
    from sentence_transformers import CrossEncoder
    from vision import page_images

    gpu = scale.device == "gpu"
    # Loaded in the served precision (bf16 on a GPU) as the server loads it: its rotary
    # frequencies stay fp32.
    cross_encoder = CrossEncoder(
        str(checkpoint),
        device="cuda" if gpu else "cpu",
        model_kwargs={"dtype": torch.bfloat16 if gpu else torch.float32},
    )
    pages = page_images(scale.vision_pages, scale.vision_page_size)
    images = [Image.open(io.BytesIO(page)).convert("RGB") for page in pages]
    bound = PARITY_BOUND["bf16" if gpu else "fp32"]
    checks = {"reference": parity(client, cross_encoder, VISION, images, bound)}
    print(f"{VISION} parity {json.dumps(checks)}", flush=True)
    n = len(pages)
    served = partial(client.rank, QUERY, pages, model=VISION)
    cases = [
        Case(
            "CrossEncoder.rank", VISION, "pages", 1, partial(cross_encoder.rank, QUERY, images), n
        ),
        Case("this server", VISION, "pages", 1, served, n),
        Case("this server", VISION, "pages", 4, served, n),
    ]
    rows = [row_of(result, "pages") for result in interleave(cases, scale.rounds)]
    return rows, checks


def ranks_at(cross_encoder: Any, documents: list[str], batch_size: int) -> Callable[[], object]:
    return lambda: cross_encoder.rank(QUERY, documents, batch_size=batch_size)
