"""The check's seeded checkpoints, built for the torch runtime into one repository."""

from __future__ import annotations

from pathlib import Path

from gpucheck.scale import CAUSAL, VISION, Scale


def build_models(scale: Scale, work: Path) -> dict[str, Path]:
    """Seeded checkpoints, each built into one repository for the torch runtime; the causal
    one twice, as built (each call's shared prompt runs once) and with rows run whole."""
    from reranker.builder.builder import BuildOptions, build
    from reranker.builder.triton_configs import TritonTuning
    from reranker.contract.model import Device, Precision, Runtime
    from tests.checkpoints import (
        QWEN3_0_6B,
        QWEN3_VL_2B,
        QWEN3_VL_PIXELS,
        QWEN3_VL_SMALL,
        bert_cross_encoder,
        qwen3_reranker,
        qwen3_vl_reranker,
    )

    checkpoints = {}
    for shape in scale.shapes:
        checkpoint = bert_cross_encoder(
            work / "checkpoints" / shape.name,
            shape.hidden,
            shape.layers,
            shape.heads,
            shape.intermediate,
        )
        options = BuildOptions(
            name=shape.name,
            precision=Precision(scale.precision),
            device=Device(scale.device),
            runtime=Runtime.TORCH,
            share_tokenizer=False,  # each row measures its model's own processes
        )
        build(str(checkpoint), options, work / "model_repository")
        checkpoints[shape.name] = checkpoint
    causal = qwen3_reranker(
        work / "checkpoints" / CAUSAL, layers=scale.causal_layers, shape=QWEN3_0_6B
    )
    for name, shared in ((CAUSAL, True), (f"{CAUSAL}-whole", False)):
        options = BuildOptions(
            name=name,
            device=Device(scale.device),
            runtime=Runtime.TORCH,
            share_tokenizer=False,  # each row measures its model's own processes
            precision_chosen=False,
            tuning=TritonTuning(shared_prefix=shared),
        )
        build(str(causal), options, work / "model_repository")
    checkpoints[CAUSAL] = causal
    vision = qwen3_vl_reranker(
        work / "checkpoints" / VISION,
        shape=QWEN3_VL_2B if scale.vision_full_shape else QWEN3_VL_SMALL,
        layers=scale.vision_layers,
        pixels=QWEN3_VL_PIXELS,
    )
    options = BuildOptions(
        name=VISION,
        device=Device(scale.device),
        runtime=Runtime.TORCH,
        precision_chosen=False,
        share_tokenizer=False,
    )
    build(str(vision), options, work / "model_repository")
    checkpoints[VISION] = vision
    return checkpoints
