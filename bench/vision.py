"""The multimodal row: one text query against page-like images (768 x 1024 renders of text),
through ``CrossEncoder.rank`` in-process and this server at concurrency 1 and 4, on a
vision-language reranker of Qwen3-VL-2B's shape; and where a served page's time went, the
checkpoint's processor (the tokenizer model) against the model (the encoder)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from engines import build_current
from harness import Case
from workloads import QUERY, workload

# Layers of the row's Qwen3-VL-2B shape, text and vision (28 and 24 in the real model): what
# fits the benchmark's budget on this 2-core machine; per-layer cost is what it measures.
VISION_LAYERS = (1, 1)
VISION_MODEL = "qwen3-vl"
PAGE_SIZE = (768, 1024)


def page_images(count: int, size: tuple[int, int] = PAGE_SIZE) -> list[bytes]:
    """``count`` PNG pages: workload (a)'s passages typeset in black on white."""
    from PIL import Image, ImageDraw

    pages = []
    for index, text in enumerate(workload("a")[:count]):
        page = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(page)
        lines = textwrap.wrap(text * 3, width=100)
        for line_number, line in enumerate(lines[:60]):
            draw.text((32, 32 + 16 * line_number), line, fill=(0, 0, 0))
        draw.text((32, size[1] - 48), f"page {index + 1}", fill=(90, 90, 90))
        buffer = io.BytesIO()
        page.save(buffer, format="PNG")
        pages.append(buffer.getvalue())
    return pages


def build_vision_model(checkpoints: Path, repository: Path) -> Path:
    from reranker.builder.builder import BuildOptions
    from tests.checkpoints import QWEN3_VL_2B, QWEN3_VL_PIXELS, qwen3_vl_reranker

    checkpoint = checkpoints / VISION_MODEL
    if not checkpoint.is_dir():
        qwen3_vl_reranker(
            checkpoint, shape=QWEN3_VL_2B, layers=VISION_LAYERS, pixels=QWEN3_VL_PIXELS
        )
    build_current(checkpoint, BuildOptions(name=VISION_MODEL), repository)
    return checkpoint


def vision_cases(client: Any, checkpoint: Path, pages: list[bytes]) -> list[Case]:
    from PIL import Image
    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(str(checkpoint), device="cpu")
    # CrossEncoder gets the pages decoded, as a caller holding images would pass them.
    images = [Image.open(io.BytesIO(page)).convert("RGB") for page in pages]
    n = len(pages)

    def served(count: int = n) -> Callable[[], object]:
        return partial(client.rank, QUERY, pages[:count], model=VISION_MODEL)

    # Warmed up on two pages: a whole call takes most of a minute here.
    reference = partial(cross_encoder.rank, QUERY, images)
    return [
        Case(
            "CrossEncoder.rank",
            VISION_MODEL,
            "pages",
            1,
            reference,
            n,
            warm_call=partial(cross_encoder.rank, QUERY, images[:2]),
        ),
        Case("this server", VISION_MODEL, "pages", 1, served(), n, warm_call=served(2)),
        Case("this server", VISION_MODEL, "pages", 4, served(), n, warm_call=served(2)),
    ]


def time_split(triton_url: str) -> dict[str, float]:
    """Where the served pages' time went, from Triton's statistics of the row's two models:
    seconds per page computing in the tokenizer model (the processor: decode, resize, patch,
    template) and in the encoder (the model). Per execution (``batch_stats``): a request's own
    statistics count a merged execution once for every request in it."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(triton_url)
    try:
        split: dict[str, float] = {}
        for role in ("tokenizer", "encoder"):
            (stats,) = client.get_inference_statistics(f"{VISION_MODEL}__{role}").model_stats
            rows = max(1, stats.inference_count)
            compute_ns = sum(batch.compute_infer.ns for batch in stats.batch_stats)
            split[f"{role}_compute_s_per_page"] = compute_ns / 1e9 / rows
            split[f"{role}_executions"] = float(stats.execution_count)
        return split
    finally:
        client.close()
