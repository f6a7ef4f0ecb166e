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

from reranker.build.common import (
    BuildError,
    BuildOptions,
    architecture,
    max_length,
    step,
)
from reranker.contract.model import (
    PROCESSOR_DIR,
    Activation,
    Device,
    EncoderRuntime,
    ModelKind,
    Precision,
    ServedModel,
    checkpoint_path,
    onnx_path,
)

# A causal vision-language model: its configuration has a vision tower.
VISION_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_TOLERANCE = 1e-4


def is_vision_language(config: dict[str, Any]) -> bool:
    return "vision_config" in config and str(config.get("model_type", "")) in VISION_FAMILIES


def _sample_messages(instruction: str | None = None) -> list[list[dict[str, Any]]]:
    """Rows the load check scores: a text pair, and text queries against images of two
    sizes (one image alone, one beside a caption)."""
    from PIL import Image

    from reranker.backend.vision import pair_messages

    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))
    tall = Image.fromarray(rng.integers(0, 256, (200, 120, 3), dtype=np.uint8))
    return [
        pair_messages(("what is a reranker", None), ("it orders documents", None), instruction),
        pair_messages(("a wide picture", None), ("", wide), instruction),
        pair_messages(("a tall picture", None), ("its caption", tall), instruction),
    ]


def build_vision_language(
    source: Path, config: dict[str, Any], options: BuildOptions, repository: Path
) -> ServedModel:
    from transformers import AutoProcessor

    from reranker.backend.torch_runtime import TORCH_DTYPES
    from reranker.backend.vision import PairProcessor, VisionLanguageRunner
    from reranker.build.causal import relevance_tokens
    from reranker.build.install import check_precision
    from reranker.build.repository import write_configs

    if options.runtime is not EncoderRuntime.TORCH and options.device is Device.GPU:
        raise BuildError("a vision-language reranker is served by the PyTorch runtime")
    if options.device is Device.GPU and not options.precision_chosen:
        options = replace(options, precision=Precision.BF16)
    options = replace(options, runtime=EncoderRuntime.TORCH)
    if options.precision not in TORCH_DTYPES:
        raise BuildError(
            f"a vision-language reranker serves fp32 on CPU, fp16 or bf16 on a GPU; "
            f"not {options.precision.value}"
        )
    check_precision(options)
    with step(f"loading processor {source}"):
        processor = AutoProcessor.from_pretrained(str(source))
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or not getattr(processor, "chat_template", None):
        raise BuildError(
            f"{source}: a vision-language reranker needs a processor with a tokenizer and a "
            "chat template that renders the query and document roles"
        )
    true_id, false_id = relevance_tokens(source, tokenizer)
    rendered = [
        processor.apply_chat_template(messages, tokenize=False)
        for messages in (_sample_messages()[0], _sample_messages("INSTRUCTION")[0])
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
        runtime=EncoderRuntime.TORCH,
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
    for directory in (processor_dir, target):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
    onnx_path(model, repository).unlink(missing_ok=True)
    with step(f"copying the processor and the checkpoint to {repository}"):
        processor.save_pretrained(str(processor_dir))
        for pattern in ("config.json", "*.safetensors", "model.safetensors.index.json"):
            for file in source.glob(pattern):
                shutil.copyfile(file, target / file.name)
    rows = [PairProcessor(processor_dir, model.max_length).row(m) for m in _sample_messages()]
    served = VisionLanguageRunner(target, (true_id, false_id)).run(rows)
    reference = _reference_scores(source, processor, true_id, false_id)
    error = float(np.abs(served - reference).max())
    print(f"  load check: max |served - checkpoint| = {error:.2e}", file=sys.stderr)
    if error > _TOLERANCE:
        raise BuildError(f"the copied checkpoint scores differently ({error:.2e})")
    write_configs(model, repository, options.tuning)
    return model


def _reference_scores(source: Path, processor: Any, true_id: int, false_id: int) -> np.ndarray:
    """The checkpoint's scores of the sample rows as ``CrossEncoder`` computes them: the
    batch rendered and left-padded by the processor, the logits at the last position."""
    import torch
    from transformers import AutoModelForImageTextToText

    network = AutoModelForImageTextToText.from_pretrained(str(source)).eval()
    processor.tokenizer.padding_side = "left"
    features = processor.apply_chat_template(
        _sample_messages(),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        processor_kwargs={"text_kwargs": {"padding": True}},
    )
    with torch.inference_mode():
        logits = network(**features, logits_to_keep=1).logits[:, -1]
    return (logits[:, true_id] - logits[:, false_id]).float().numpy()
