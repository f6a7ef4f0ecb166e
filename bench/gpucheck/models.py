"""The check's seeded checkpoints, each built for the torch runtime into one repository: one
function a model, so a model that cannot be made or built costs its own rows alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gpucheck.scale import CAUSAL, LATE, VISION, Scale, Shape


def other_instances(scale: Scale) -> tuple[str, int]:
    """The first shape again, built with the encoder instance count the default does not
    give (1 on a GPU, where 2 is the default; 2 on CPU): its name and that count, so the
    check measures both."""
    count = 1 if scale.device == "gpu" else 2
    return f"{scale.shapes[0].name}-{count}x", count


def build_shape(shape: Shape, scale: Scale, work: Path, instances: int = 0) -> Path:
    """A BERT cross-encoder of ``shape``, built as ``shape.name`` (with ``instances``
    encoder instances: as :func:`other_instances` names it)."""
    from reranker.builder.builder import BuildOptions, build
    from reranker.builder.triton_configs import TritonTuning
    from reranker.contract.model import Device, Precision, Runtime
    from tests.checkpoints import bert_cross_encoder

    checkpoint = bert_cross_encoder(
        work / "checkpoints" / shape.name,
        shape.hidden,
        shape.layers,
        shape.heads,
        shape.intermediate,
    )
    if instances:
        name = other_instances(scale)[0]
        tuning = (
            TritonTuning(torch_gpu_encoder_instances=instances)
            if scale.device == "gpu"
            else TritonTuning(encoder_instances=instances)
        )
    else:
        name, tuning = shape.name, TritonTuning()
    options = BuildOptions(
        name=name,
        precision=Precision(scale.precision),
        device=Device(scale.device),
        runtime=Runtime.TORCH,
        share_tokenizer=False,  # each row measures its model's own processes
        tuning=tuning,
    )
    build(str(checkpoint), options, work / "model_repository")
    return checkpoint


def build_causal(scale: Scale, work: Path) -> Path:
    """Qwen3-Reranker's shape, built twice: as served (each call's shared prompt runs once)
    and with rows run whole."""
    from reranker.builder.builder import BuildOptions, build
    from reranker.builder.triton_configs import TritonTuning
    from reranker.contract.model import Device, Runtime
    from tests.checkpoints import QWEN3_0_6B, qwen3_reranker

    causal = qwen3_reranker(
        work / "checkpoints" / CAUSAL, layers=scale.causal_layers, shape=QWEN3_0_6B
    )
    for name, shared in ((CAUSAL, True), (f"{CAUSAL}-whole", False)):
        options = BuildOptions(
            name=name,
            device=Device(scale.device),
            runtime=Runtime.TORCH,
            share_tokenizer=False,
            precision_chosen=False,
            tuning=TritonTuning(shared_prefix=shared),
        )
        build(str(causal), options, work / "model_repository")
    return causal


def build_vision(scale: Scale, work: Path) -> Path:
    """A vision-language reranker of Qwen3-VL-2B's shape (or a small one)."""
    from reranker.builder.builder import BuildOptions, build
    from reranker.contract.model import Device, Runtime
    from tests.checkpoints import QWEN3_VL_2B, QWEN3_VL_PIXELS, QWEN3_VL_SMALL, qwen3_vl_reranker

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
    return vision


def build_late(scale: Scale, work: Path) -> Path:
    """A late-interaction reranker (ColBERT) of answerai-colbert-small-v1's shape (or a small
    one), served by the PyTorch runtime on the device (fp16 on a GPU)."""
    from reranker.builder.builder import BuildOptions, build
    from reranker.contract.model import Device, Precision, Runtime
    from tests.late_checkpoints import pylate_colbert

    target = work / "checkpoints" / LATE
    if scale.late_full_shape:
        late = pylate_colbert(
            target, hidden=384, layers=6, dim=96, query_length=32, document_length=180
        )
    else:
        late = pylate_colbert(target)
    options = BuildOptions(
        name=LATE,
        device=Device(scale.device),
        runtime=Runtime.TORCH,
        precision=Precision(scale.precision),
        share_tokenizer=False,
    )
    build(str(late), options, work / "model_repository")
    return late


def builders(scale: Scale) -> dict[str, Callable[[Scale, Path], Path]]:
    """Each model's builder, by the model's name, in the order they are built."""
    found: dict[str, Callable[[Scale, Path], Path]] = {
        shape.name: (lambda s, w, shape=shape: build_shape(shape, s, w))  # type: ignore[misc]
        for shape in scale.shapes
    }
    variant, count = other_instances(scale)
    first = scale.shapes[0]
    found[variant] = lambda s, w: build_shape(first, s, w, count)
    found[CAUSAL] = lambda s, w: build_causal(s, w)
    found[VISION] = lambda s, w: build_vision(s, w)
    found[LATE] = lambda s, w: build_late(s, w)
    return found
