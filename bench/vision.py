"""The multimodal row: one text query against page-like images (768 x 1024 renders of text),
through ``CrossEncoder.rank`` in-process and this server at concurrency 1 and 4, on a
vision-language reranker of Qwen3-VL-2B's shape; and where a row's time goes, the checkpoint's
processor (what the tokenizer model runs) against the model (what the encoder runs)."""

from __future__ import annotations

import io
import textwrap
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

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
    from reranker.build.builder import BuildOptions, build
    from tests.checkpoints import QWEN3_VL_2B, QWEN3_VL_PIXELS, qwen3_vl_reranker

    checkpoint = checkpoints / VISION_MODEL
    if not checkpoint.is_dir():
        qwen3_vl_reranker(
            checkpoint, shape=QWEN3_VL_2B, layers=VISION_LAYERS, pixels=QWEN3_VL_PIXELS
        )
    if not (repository / VISION_MODEL).is_dir():
        build(str(checkpoint), BuildOptions(name=VISION_MODEL), repository)
    return checkpoint


def vision_cases(client: Any, checkpoint: Path, pages: list[bytes]) -> list[Case]:
    from PIL import Image
    from sentence_transformers import CrossEncoder

    cross_encoder = CrossEncoder(str(checkpoint), device="cpu")
    # CrossEncoder gets the pages decoded, as a caller holding images would pass them.
    images = [Image.open(io.BytesIO(page)).convert("RGB") for page in pages]
    n = len(pages)

    def served() -> Callable[[], object]:
        return partial(client.rank, QUERY, pages, model=VISION_MODEL)

    return [
        Case(
            "CrossEncoder.rank",
            VISION_MODEL,
            "pages",
            1,
            partial(cross_encoder.rank, QUERY, images),
            n,
        ),
        Case("this server", VISION_MODEL, "pages", 1, served(), n),
        Case("this server", VISION_MODEL, "pages", 4, served(), n),
    ]


def time_split(repository: Path, pages: list[bytes], rows_per_run: int = 4) -> dict[str, float]:
    """Seconds per page in the processor (decode, resize, patch, template) and in the model,
    in this process on the served files, one after the other."""
    from reranker.backend.images import decode
    from reranker.backend.vision import PairProcessor, VisionLanguageRunner, pair_messages
    from reranker.contract.parameters import TorchEncoderParameters, from_parameters

    processor = PairProcessor(repository / f"{VISION_MODEL}__tokenizer" / "1" / "processor", 8192)
    encoder = repository / f"{VISION_MODEL}__encoder"
    parameters = _encoder_parameters(encoder / "config.pbtxt")
    torch_parameters = from_parameters(TorchEncoderParameters, parameters, VISION_MODEL)
    relevant, irrelevant = torch_parameters.relevance_tokens
    runner = VisionLanguageRunner(encoder / "1" / "checkpoint", (relevant, irrelevant))
    start = time.perf_counter()
    rows = [processor.row(pair_messages((QUERY, None), ("", decode(page)))) for page in pages]
    processed = time.perf_counter()
    for first in range(0, len(rows), rows_per_run):
        runner.run(rows[first : first + rows_per_run])
    ran = time.perf_counter()
    return {
        "preprocess_s_per_page": (processed - start) / len(pages),
        "model_s_per_page": (ran - processed) / len(pages),
        "tokens_per_row": float(rows[0].length),
    }


def _encoder_parameters(config: Path) -> dict[str, str]:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    parsed = text_format.Parse(config.read_text(), mc.ModelConfig())
    return {key: value.string_value for key, value in parsed.parameters.items()}
