"""Puts what a build made into the repository: the graph (or its reduced-precision variant,
with an accuracy report) or the checkpoint itself, the tokenizer and the configurations, each
checked against the model it came from."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from tokenizers import Tokenizer

from reranker.backend.cpu import cpu_flags, has_native_bf16
from reranker.backend.tokenization import PairTokenizer, PairTokenizerConfig, PromptTemplate
from reranker.builder.common import BuildError, BuildOptions, step
from reranker.builder.precision import REPORT_FILE, reduce_precision, write_accuracy_report
from reranker.builder.repository import write_configs
from reranker.contract.model import (
    PROMPT_FILE,
    Device,
    ModelKind,
    Precision,
    Runtime,
    ServedModel,
    checkpoint_path,
    onnx_path,
    tokenizer_path,
)
from reranker.contract.tensors import PREFIX_IDS, TOKEN_TENSORS, max_chars

# Largest error an export may show against the torch model it came from, relative to the
# model's largest output where that is over 1 (onnx_export.max_export_error).
EXPORT_TOLERANCE = 1e-4


def check_export(error: float) -> None:
    print(f"  export check: max |onnx - torch| / max(1, |torch|) = {error:.2e}", file=sys.stderr)
    if error > EXPORT_TOLERANCE:
        raise BuildError(f"ONNX export differs from the checkpoint by {error:.2e}")


def pair_tokenizer(
    tokenizer: Tokenizer, model: ServedModel, prompt: PromptTemplate | None = None
) -> PairTokenizer:
    config = PairTokenizerConfig(
        model.max_length, model.pair_mode, max_chars(model.max_length), prompt=prompt
    )
    return PairTokenizer(Tokenizer.from_str(tokenizer.to_str()), config)


class GraphSignature(NamedTuple):
    # The token tensors the graph really reads (exporters drop unused ones).
    token_inputs: tuple[str, ...]
    # Its one output: one score per row, ``[batch, 1]``.
    output: str
    # Whether it takes its rows' shared prompt prefix apart (``prefix_ids``).
    takes_prefix: bool


def graph_signature(path: Path) -> GraphSignature:
    """What an ONNX graph reads and writes, checked to be what this server can feed it."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    unknown = inputs - set(TOKEN_TENSORS) - {PREFIX_IDS}
    if unknown:
        raise BuildError(f"{path} reads inputs this server cannot feed: {sorted(unknown)}")
    if len(graph.output) != 1:
        raise BuildError(f"{path} has {len(graph.output)} outputs; expected one")
    (output,) = graph.output
    dims = [d.dim_value or d.dim_param for d in output.type.tensor_type.shape.dim]
    if len(dims) != 2 or dims[1] != 1:
        raise BuildError(f"{path} outputs {output.name} of shape {dims}; expected [batch, 1]")
    tokens = tuple(name for name in TOKEN_TENSORS if name in inputs)
    return GraphSignature(tokens, output.name, PREFIX_IDS in inputs)


# A graph file past this size holds its weights inline (an exporter's small graphs stay as
# they are).
INLINE_WEIGHTS_MIN_BYTES = 4 << 20


def store_graph(source: Path, target: Path) -> None:
    """Puts the graph at ``source`` (``target`` itself: rewritten in place) at ``target``:
    byte for byte where it is small and self-contained, else with its weights in
    ``<target>_data``, wherever the source kept them. ONNX Runtime maps such a file into
    memory where it would otherwise copy every weight out of the parsed graph, so a model's
    process holds less and peaks lower while it loads (measured for MiniLM: 109 MB resident
    instead of 151, 176 MB at the peak instead of 217), and a graph past protobuf's 2 GB
    bound can be written at all."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    initializers = onnx.load(str(source), load_external_data=False).graph.initializer
    external = any(uses_external_data(tensor) for tensor in initializers)
    if source.stat().st_size < INLINE_WEIGHTS_MIN_BYTES and not external:
        if source != target:
            shutil.copyfile(source, target)
        return
    loaded = onnx.load(str(source))
    data = target.with_name(target.name + "_data")
    # onnx appends to an existing data file; what it held is in ``loaded`` now.
    data.unlink(missing_ok=True)
    onnx.save_model(
        loaded,
        str(target),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    # onnx writes the data file for its owner alone; a server run as another user (a
    # container's) reads it as it reads the graph.
    data.chmod(target.stat().st_mode & 0o777)


def check_precision(options: BuildOptions) -> None:
    """Refuses a precision the target cannot serve well, saying why."""
    if options.runtime is Runtime.TORCH:
        if options.device is Device.GPU and options.precision is Precision.INT8:
            raise BuildError("the torch runtime serves fp16, bf16 or fp32 on a GPU, not int8")
        if options.device is Device.CPU and options.precision is not Precision.FP32:
            raise BuildError(
                "the torch runtime runs fp32 on CPU; for a reduced precision on CPU use "
                "--runtime onnx (int8, or bf16 through OpenVINO)"
            )
        return
    if options.device is Device.GPU and options.precision is Precision.INT8:
        raise BuildError("int8 here is dynamic quantization for CPU; on GPU use fp16")
    if options.precision is not Precision.BF16:
        return
    if options.device is Device.GPU:
        raise BuildError("bf16 here is OpenVINO on CPU; on GPU use fp16")
    if not has_native_bf16(cpu_flags()):
        raise BuildError(
            "bf16 needs a CPU with native BF16 arithmetic (AMX, flag amx_bf16, or AVX-512 BF16, "
            "flag avx512_bf16); this CPU has neither, so bf16 would be emulated and slower "
            "than fp32. Build fp32 (exact) or int8 (faster) instead"
        )


def install(
    model: ServedModel,
    tokenizer: Tokenizer,
    graph: Path,
    options: BuildOptions,
    repository: Path,
    prompt: PromptTemplate | None = None,
    published: Precision | None = None,
) -> ServedModel:
    """Puts an fp32 graph (or its reduced-precision variant, with an accuracy report) and
    the tokenizer into the repository, and writes the configurations. ``published`` is the
    precision of a graph its publisher already reduced: it is served as it is."""
    signature = graph_signature(graph)
    model = replace(
        model,
        token_inputs=signature.token_inputs,
        graph_output=signature.output,
        shared_prefix=signature.takes_prefix,
        precision=published or options.precision,
        device=options.device,
    )
    target = onnx_path(model, repository)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in (target.with_name(target.name + "_data"), target.parent / REPORT_FILE):
        stale.unlink(missing_ok=True)
    check_precision(options)
    # On GPU the fp32 graph is served and TensorRT builds fp16 engines from it on the GPU
    # (its accuracy can only be measured there). bf16 serves the fp32 graph too: OpenVINO
    # converts it when it loads it.
    if (
        published
        or options.precision in (Precision.FP32, Precision.BF16)
        or options.device is Device.GPU
    ):
        store_graph(graph, target)
    else:
        with step(f"converting to {options.precision.value}"):
            reduce_precision(graph, target, options.precision)
        store_graph(target, target)
    if not published and options.precision is not Precision.FP32 and options.device is Device.CPU:
        with step(f"measuring {options.precision.value} against fp32 on real-text pairs"):
            report = write_accuracy_report(
                graph,
                target,
                pair_tokenizer(tokenizer, model, prompt),
                options.precision,
                options.accuracy_passages,
            )
        print(f"  accuracy: {json.dumps(report)}", file=sys.stderr)
    write_tokenizer(model, tokenizer, prompt, repository)
    write_configs(model, repository, options.tuning)
    return model


# What the PyTorch runtime loads of a checkpoint: its configuration and weights.
_CHECKPOINT_FILES = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model.bin.index.json",
)


def install_checkpoint(
    model: ServedModel,
    tokenizer: Tokenizer,
    source: Path,
    reference: Any,
    inputs: tuple[str, ...],
    options: BuildOptions,
    repository: Path,
    prompt: PromptTemplate | None = None,
) -> ServedModel:
    """Puts the checkpoint itself beside the PyTorch encoder, checks that what the runtime
    loads from there scores as ``reference`` (the module the build loaded) does, and writes
    the tokenizer and the configurations."""
    import torch

    from reranker.backend.torch_runtime import TorchRunner
    from reranker.builder.onnx_export import sample_batch

    check_precision(options)
    model = replace(
        model,
        token_inputs=inputs,
        precision=options.precision,
        device=options.device,
        runtime=Runtime.TORCH,
    )
    target = checkpoint_path(model, repository)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    stale = onnx_path(model, repository)
    for path in (stale, stale.with_name(stale.name + "_data"), stale.parent / REPORT_FILE):
        path.unlink(missing_ok=True)
    with step(f"copying the checkpoint to {target}"):
        for pattern in _CHECKPOINT_FILES:
            for file in source.glob(pattern):
                shutil.copyfile(file, target / file.name)
    batch = sample_batch(pair_tokenizer(tokenizer, model, prompt))
    feeds = {name: batch[name] for name in inputs}
    runner = TorchRunner(
        target,
        bi_encoder=model.kind is ModelKind.BI_ENCODER,
        input_names=list(inputs),
        relevance=model.relevance_tokens,
    )
    with torch.no_grad():
        expected = reference(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    error = float(abs(runner.run(feeds) - expected.reshape(-1).numpy()).max())
    print(f"  load check: max |served - checkpoint| = {error:.2e}", file=sys.stderr)
    if error > EXPORT_TOLERANCE:
        raise BuildError(f"the copied checkpoint scores differently ({error:.2e})")
    write_tokenizer(model, tokenizer, prompt, repository)
    write_configs(model, repository, options.tuning)
    return model


def write_tokenizer(
    model: ServedModel, tokenizer: Tokenizer, prompt: PromptTemplate | None, repository: Path
) -> None:
    """The tokenizer model's files: ``tokenizer.json``, and a causal LM's ``prompt.json``."""
    path = tokenizer_path(model, repository)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    prompt_file = path.with_name(PROMPT_FILE)
    prompt_file.unlink(missing_ok=True)
    if prompt is not None:
        prompt_file.write_text(json.dumps(prompt.to_json(), indent=1) + "\n")
