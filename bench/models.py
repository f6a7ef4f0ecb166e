"""The benchmark's model repository: every compared model built by the real builder, and
rebuilt only when the build code or its options changed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engines import build_current, suffix_for

from reranker.contract.model import Precision

# Layers of the causal-LM row's Qwen3-Reranker-0.6B shape: its 28 would take a quarter of an
# hour a round on this 2-core machine, so the row runs 4 (per-layer cost is what it measures).
CAUSAL_LAYERS = 4


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
