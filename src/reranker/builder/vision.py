"""Vision-language rerankers (Qwen3-VL-Reranker, jina-reranker-m0 and their kind): a causal
vision-language model saved as sentence-transformers' ``CrossEncoder`` saves it (its
processor, a ``LogitScore`` module naming the relevance tokens). The build copies the
processor beside the tokenizer model, which runs it, and the checkpoint beside the PyTorch
encoder, and checks that what the runtime loads scores a text pair and an image pair as the
checkpoint does.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from reranker.builder.common import BuildError, BuildOptions, architecture, max_length, step
from reranker.contract.model import (
    PROCESSOR_DIR,
    Activation,
    Device,
    ModelKind,
    Precision,
    Runtime,
    ServedModel,
    checkpoint_path,
    onnx_path,
)

# A causal vision-language model: its configuration has a vision tower.
VISION_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_TOLERANCE = 1e-4


def is_vision_language(config: dict[str, Any]) -> bool:
    return "vision_config" in config and str(config.get("model_type", "")) in VISION_FAMILIES


def _sample_pairs() -> list[tuple[tuple[str, Any], tuple[str, Any]]]:
    """Pairs the load check scores, as (text, image) sides: a text pair, and text queries
    against images of two sizes (one image alone, one beside a caption)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))
    tall = Image.fromarray(rng.integers(0, 256, (200, 120, 3), dtype=np.uint8))
    return [
        (("what is a reranker", None), ("it orders documents", None)),
        (("a wide picture", None), ("", wide)),
        (("a tall picture", None), ("its caption", tall)),
    ]


def _cross_encoder_input(side: tuple[str, Any]) -> Any:
    """A side as ``CrossEncoder`` takes it: a text, an image, or both (image first)."""
    text, image = side
    if image is None:
        return text
    return {"image": image, "text": text} if text else image


def build_vision_language(
    source: Path, config: dict[str, Any], options: BuildOptions, repository: Path
) -> ServedModel:
    from transformers import AutoProcessor

    from reranker.backend.vision import pair_messages
    from reranker.builder.causal import relevance_tokens
    from reranker.builder.repository import write_configs

    options = _vision_options(options)
    with step(f"loading processor {source}"):
        processor = AutoProcessor.from_pretrained(str(source))
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not getattr(processor, "chat_template", None):
        raise BuildError(
            f"{source}: a vision-language reranker needs a processor with a tokenizer and a "
            "chat template that renders the query and document roles"
        )
    true_id, false_id = relevance_tokens(source, tokenizer)
    query, document = _sample_pairs()[0]
    rendered = [
        processor.apply_chat_template(pair_messages(query, document, instruction), tokenize=False)
        for instruction in (None, "INSTRUCTION")
    ]
    model = ServedModel(
        name=options.name,
        kind=ModelKind.CAUSAL_LM,
        architecture=architecture(config, ""),
        max_length=max_length(options, source),
        activation=Activation.SIGMOID,
        token_inputs=("input_ids", "attention_mask"),
        max_batch_size=options.max_batch_size,
        precision=options.precision,
        device=options.device,
        runtime=Runtime.TORCH,
        family=str(config.get("model_type", "")),
        # The template renders an instruction (CrossEncoder's prompt, a system message).
        takes_instruction=rendered[0] != rendered[1],
        relevance_tokens=(true_id, false_id),
        takes_images=True,
    )
    print(
        f"  relevance tokens: {tokenizer.convert_ids_to_tokens(true_id)!r} ({true_id}) less "
        f"{tokenizer.convert_ids_to_tokens(false_id)!r} ({false_id}); instruction: "
        f"{'yes' if model.takes_instruction else 'no'}",
        file=sys.stderr,
    )
    processor_dir = repository / model.tokenizer_model / "1" / PROCESSOR_DIR
    target = checkpoint_path(model, repository)
    _install_files(processor, source, processor_dir, target, repository)
    onnx_path(model, repository).unlink(missing_ok=True)
    _check_served(source, processor_dir, target, model.max_length, (true_id, false_id))
    write_configs(model, repository, options.tuning)
    return model


def _vision_options(options: BuildOptions) -> BuildOptions:
    """The PyTorch runtime serves it on CPU and GPU alike (no ONNX export of the vision
    tower): fp32 on CPU, bf16 by default on a GPU (fp16 when chosen)."""
    from reranker.backend.torch_runtime import TORCH_DTYPES
    from reranker.builder.install import check_precision

    if options.device is Device.GPU and not options.precision_chosen:
        options = replace(options, precision=Precision.BF16)
    options = replace(options, runtime=Runtime.TORCH)
    if options.precision not in TORCH_DTYPES:
        raise BuildError(
            f"a vision-language reranker serves fp32 on CPU, fp16 or bf16 on a GPU; "
            f"not {options.precision.value}"
        )
    check_precision(options)
    return options


def _install_files(
    processor: Any, source: Path, processor_dir: Path, target: Path, repository: Path
) -> None:
    """The processor beside the tokenizer model, the checkpoint's weights beside the encoder
    (whatever an earlier build left there removed first)."""
    for directory in (processor_dir, target):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    with step(f"copying the processor and the checkpoint to {repository}"):
        processor.save_pretrained(str(processor_dir))
        for pattern in ("config.json", "*.safetensors", "model.safetensors.index.json"):
            for file in source.glob(pattern):
                shutil.copyfile(file, target / file.name)


def _check_served(
    source: Path, processor_dir: Path, target: Path, max_length: int, tokens: tuple[int, int]
) -> None:
    """Refuses served files that score the sample pairs otherwise than ``CrossEncoder`` on
    the checkpoint itself."""
    from reranker.backend.vision import PairProcessor, VisionLanguageRunner, pair_messages

    pairs = _sample_pairs()
    pair_processor = PairProcessor(processor_dir, max_length)
    rows = [pair_processor.row(pair_messages(query, document)) for query, document in pairs]
    served = VisionLanguageRunner(target, tokens).run(rows)
    reference = _cross_encoder_scores(source, pairs)
    error = float(np.abs(served - reference).max())
    print(f"  load check: max |served - CrossEncoder| = {error:.2e}", file=sys.stderr)
    if error > _TOLERANCE:
        raise BuildError(
            f"the served files score differently from CrossEncoder on the checkpoint "
            f"({error:.2e}): its sentence-transformers settings (processing_kwargs, prompts) "
            "may ask for what the server does not do"
        )


def _cross_encoder_scores(
    source: Path, pairs: list[tuple[tuple[str, Any], tuple[str, Any]]]
) -> np.ndarray:
    """The reference: ``CrossEncoder.predict`` on the checkpoint, in fp32, raw logits."""
    import torch
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(source), device="cpu", model_kwargs={"dtype": torch.float32})
    inputs = [(_cross_encoder_input(q), _cross_encoder_input(d)) for q, d in pairs]
    scores = model.predict(inputs, activation_fn=torch.nn.Identity())
    return np.asarray(scores, dtype=np.float32)
