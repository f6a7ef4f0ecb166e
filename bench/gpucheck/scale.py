"""The check's scales (the GPU run, its CPU dry run, a small CPU run), the served models' names
and the bounds its checks hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The project's own packages, importable from the tree without installing it.
SOURCES = [ROOT, ROOT / "src", ROOT / "api", ROOT / "client", ROOT / "bench"]
QUERY = "how does the interpreter handle an exception raised inside a loop"
# Every call's deadline, the largest sweep's last caller included.
CALL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int


@dataclass(frozen=True)
class Scale:
    device: str
    precision: str
    shapes: tuple[Shape, ...]
    documents: int
    concurrency: tuple[int, ...]
    rounds: int
    large_call: int
    small_callers: int
    small_documents: int
    batch_sizes: tuple[int, ...]
    shipped_batch_size: int = 32
    gemm_size: int = 8192
    # Layers of the causal row's Qwen3-Reranker-0.6B shape (28 in the real model), and the
    # documents of its calls.
    causal_layers: int = 8
    causal_documents: int = 100
    # The multimodal row: a vision-language reranker of Qwen3-VL-2B's shape (or a small one)
    # with these text and vision layers (28 and 24 in the real model), one text query against
    # this many page-like images of this size (width, height).
    vision_full_shape: bool = True
    vision_layers: tuple[int, int] = (4, 4)
    vision_pages: int = 20
    vision_page_size: tuple[int, int] = (768, 1024)
    # The late-interaction row: answerai-colbert-small-v1's shape (BERT, 6 layers, hidden 384,
    # 96-dim vectors; or a small one), one call of this many documents.
    late_full_shape: bool = True
    late_documents: int = 100
    # Workload a's documents cut to their first this many words (None: whole). The dry run
    # sends the GPU's row counts; its rows' length is not what it checks.
    document_words: int | None = None


GPU = Scale(
    device="gpu",
    precision="fp16",
    shapes=(Shape("minilm-l6", 384, 6, 12, 1536), Shape("bert-base", 768, 12, 12, 3072)),
    documents=100,
    concurrency=(1, 4, 16, 64),
    rounds=5,
    large_call=1000,
    small_callers=64,
    small_documents=10,
    batch_sizes=(32, 64, 128),
)
# The GPU's call sizes, concurrency and row counts, run on CPU with a one-layer model: what
# the GPU run sends (the row budget, the sweep, the report) is exercised without a GPU.
# (Narrower models score a pair differently alone and in a batch by more than the fp32
# parity bound, CrossEncoder itself included: 1.6e-5 at hidden 64, 3.7e-6 at 384.)
DRY_RUN = Scale(
    device="cpu",
    precision="fp32",
    shapes=(Shape("minilm-l6", 384, 1, 12, 1536),),
    documents=GPU.documents,
    concurrency=GPU.concurrency,
    rounds=1,
    large_call=GPU.large_call,
    small_callers=GPU.small_callers,
    small_documents=GPU.small_documents,
    batch_sizes=GPU.batch_sizes,
    gemm_size=1024,
    causal_layers=1,
    causal_documents=16,
    vision_full_shape=False,
    vision_layers=(1, 1),
    vision_pages=4,
    vision_page_size=(160, 200),
    late_full_shape=False,
    document_words=12,
)
CPU = Scale(
    device="cpu",
    precision="fp32",
    shapes=(Shape("minilm-l6", 384, 1, 12, 1536), Shape("bert-base", 768, 1, 12, 3072)),
    documents=20,
    concurrency=(1, 4),
    rounds=2,
    large_call=100,
    small_callers=8,
    small_documents=5,
    batch_sizes=(32, 64),
    gemm_size=1024,
    causal_layers=1,
    causal_documents=16,
    vision_full_shape=False,
    vision_layers=(1, 1),
    vision_pages=4,
    vision_page_size=(160, 200),
    late_full_shape=False,
    late_documents=20,
)


# The multimodal row's model.
VISION = "qwen3-vl"
# The causal-LM row: its model, and the instruction its calls carry (Qwen3-Reranker's own).
CAUSAL = "qwen3"
CAUSAL_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


# Largest |served - reference| of sigmoid scores a parity check accepts: fp32 serving is
# CrossEncoder's arithmetic; fp16 or bf16 serving differs by its rounding.
PARITY_BOUND = {"fp32": 1e-5, "fp16": 5e-3, "bf16": 5e-3}
# The late-interaction row's model, and its bound on MaxSim scores against MultiVectorEncoder
# in fp32: served in fp32, its arithmetic (1e-4, as make test holds it); in fp16 or bf16, the
# bound asked of the row, though a score sums 32 query tokens' rounded cosines (an estimate,
# not measured: about 3e-3 if their errors are random, more if not): a miss there is a
# finding, not a crash.
LATE = "colbert-small"
LATE_PARITY_BOUND = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 5e-3}
LATE_CALLS_PER_RUN = 8
