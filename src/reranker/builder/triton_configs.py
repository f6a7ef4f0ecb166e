"""Triton configurations of a served model's three Triton models: the tokenizer, the encoder
(a Python-backend encoder running ONNX on CPU or PyTorch on CPU or GPU, or the GPU
onnxruntime/TensorRT one) and the ensemble."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from reranker.backend.runtimes import cpu_runtime
from reranker.contract.model import (
    ONNX_FILE,
    PROMPT_FILE,
    Device,
    ModelKind,
    PairMode,
    Precision,
    Runtime,
    ServedModel,
)
from reranker.contract.parameters import (
    INTRA_OP_SPIN_US,
    EnsembleParameters,
    GraphEncoderParameters,
    ProcessorParameters,
    TokenizerParameters,
    TorchCompile,
    TorchEncoderParameters,
    to_parameters,
)
from reranker.contract.tensors import (
    DOCUMENT,
    IMAGE_INPUTS,
    LATE_TOKEN_TENSORS,
    PIXEL_VALUES,
    QUERY,
    SCORE,
    TOKENS,
    VISION_TOKEN_TENSORS,
    max_chars,
)
from reranker.settings import option

# Padded lengths on GPU: every distinct length is another TensorRT engine shape, and only
# requests of equal shape are batched together.
GPU_LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
GPU_PREFERRED_BATCH_SIZES = (8, 16, 32, 64, 128)
TENSORRT_CACHE = "/engine_cache"


@dataclass(frozen=True)
class TritonTuning:
    """How Triton runs a served model: instances, threads, batching and queue delays, written
    into the configurations at build time (``reranker build`` flags, ``RERANKER_`` variables
    or a ``--tuning`` TOML file). Not part of what describes the model: the rank service
    never reads it back."""

    length_buckets: tuple[int, ...] = option(
        (),
        "lengths the tokenizer pads rows to (empty: each request to its longest row; on GPU "
        "with the onnx runtime, powers of two up to the model's max length)",
    )
    tokenizer_instances: int = option(1, "tokenizer model instances on a CPU build")
    encoder_instances: int = option(1, "encoder model instances")
    intra_op_threads: int = option(
        0,
        "threads each CPU encoder instance's runtime uses (0: an equal share of the cores "
        "available when the server starts, cgroup quota included)",
    )
    intra_op_spin_us: int = option(
        INTRA_OP_SPIN_US,
        "microseconds ONNX Runtime's idle worker threads busy-wait for the next piece of work "
        "before they sleep (0: they sleep at once). A call's back-to-back runs find them awake "
        "(measured: 5-8% more served pairs/s than sleeping); left to ONNX Runtime (no "
        "bound) they spin about 45 ms after every run, a core the tokenizer and the service "
        "then lack",
    )
    max_attention_cells: int = option(
        1 << 22,
        "attention cells (rows x length^2) one encoder run may hold, so long rows cannot "
        "exhaust memory (2^22: 16 rows of 512 tokens; a longer row runs alone; x64 on GPU)",
    )
    max_rows_per_run: int = option(
        16, "rows one encoder run holds at most on CPU; the split minimizes padding"
    )
    tokenizer_queue_delay_us: int = option(500, "tokenizer dynamic batcher's queue delay")
    encoder_queue_delay_us: int = option(2000, "CPU encoder dynamic batcher's queue delay")
    gpu_queue_delay_us: int = option(1000, "queue delay of Triton's onnxruntime GPU encoder")
    tensorrt_workspace_bytes: int = option(1 << 31, "TensorRT builder workspace on GPU")
    gpu_tokenizer_instances: int = option(
        4, "tokenizer instances beside a GPU encoder (tokenizing runs on CPU)"
    )
    torch_gpu_max_batch_size: int = option(
        512, "rows of several callers the PyTorch GPU encoder merges into one execution"
    )
    torch_gpu_max_rows_per_run: int = option(256, "rows one PyTorch GPU run holds at most")
    torch_gpu_encoder_instances: int = option(
        2,
        "PyTorch GPU encoder instances: while one runs on the GPU, another plans and pads its "
        "next execution on CPU",
    )
    torch_gpu_max_tokens_per_run: int = option(
        1 << 16, "padded tokens one PyTorch GPU run holds at most"
    )
    vision_max_tokens_per_run: int = option(
        4096,
        "tokens (image tokens included) one CPU run of a vision-language reranker holds at "
        "most: a page image is about 800, and its activations scale with them",
    )
    torch_gpu_run_overhead_tokens: int = option(
        1024, "a PyTorch GPU run's fixed cost (kernel launches), in tokens' work"
    )
    torch_gpu_queue_delay_us: int = option(500, "PyTorch GPU encoder's queue delay")
    shared_prefix: bool = option(
        True,
        "causal-LM rerankers: the prompt prefix rows share runs once per group of rows (the "
        "CPU graph takes it apart; the PyTorch runtime uses its cache); false: rows run whole",
    )
    torch_compile: TorchCompile = option(
        TorchCompile.EAGER, "PyTorch encoder: eager, default or reduce-overhead (torch.compile)"
    )
    document_cache_mb: int = option(
        0,
        "late-interaction rerankers: MiB of document vectors each encoder instance keeps, "
        "least recently used out first (0: off); a document seen before skips the encoder",
    )


DEFAULT_TUNING = TritonTuning()


def set_parameters(config: mc.ModelConfig, values: object) -> None:
    for key, value in to_parameters(values).items():
        config.parameters[key].string_value = value


def string_inputs(config: mc.ModelConfig, model: ServedModel) -> None:
    for name in _row_inputs(model):
        config.input.add(name=name, data_type=mc.TYPE_STRING, dims=[1])


def _row_inputs(model: ServedModel) -> tuple[str, ...]:
    """What the ensemble takes per row: the texts, and a vision-language model's images."""
    return (QUERY, DOCUMENT, *IMAGE_INPUTS) if model.takes_images else (QUERY, DOCUMENT)


def encoder_inputs(model: ServedModel) -> list[tuple[str, int]]:
    """What the tokenizer model hands the encoder, with its data type."""
    if model.kind is ModelKind.LATE_INTERACTION:
        return [(name, mc.TYPE_INT64) for name in LATE_TOKEN_TENSORS]
    if model.takes_images:
        return [(name, mc.TYPE_INT64) for name in VISION_TOKEN_TENSORS] + [
            (PIXEL_VALUES, mc.TYPE_FP32)
        ]
    return [(name, mc.TYPE_INT64) for name in model.token_inputs]


def dynamic_batching(config: mc.ModelConfig, queue_delay_us: int) -> None:
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = queue_delay_us
    # No ``default_queue_policy``: with one (a queue size, per-request timeouts) Triton 2.51's
    # batcher held tokenizer requests in the queue for tens of milliseconds instead of a few
    # (docs/benchmark.md, levers). The rank service bounds the work it sends
    # (max_rows_in_flight) and each request's time (its gRPC deadline).


def tokenizer_config(model: ServedModel, tuning: TritonTuning = DEFAULT_TUNING) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model.tokenizer_model, backend="python")
    config.max_batch_size = model.max_batch_size
    string_inputs(config, model)
    for name, data_type in encoder_inputs(model):
        config.output.add(name=name, data_type=data_type, dims=[-1])
    config.output.add(name=TOKENS, data_type=mc.TYPE_INT32, dims=[1])
    instances = (
        tuning.gpu_tokenizer_instances if model.device is Device.GPU else tuning.tokenizer_instances
    )
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    dynamic_batching(config, tuning.tokenizer_queue_delay_us)
    if model.takes_images:
        set_parameters(config, ProcessorParameters(max_length=model.max_length))
        return config
    set_parameters(
        config,
        TokenizerParameters(
            max_length=model.max_length,
            pair_mode=model.pair_mode,
            max_chars=max_chars(model.max_length),
            length_buckets=tokenizer_buckets(model, tuning),
            prompt_file=PROMPT_FILE if model.pair_mode is PairMode.PROMPT else "",
        ),
    )
    return config


def tokenizer_buckets(model: ServedModel, tuning: TritonTuning = DEFAULT_TUNING) -> tuple[int, ...]:
    """The tokenizer's padded lengths: the model's own, or for Triton's native GPU encoder
    a fixed set up to its max length (the Python-backend encoders take ragged batches)."""
    if tuning.length_buckets or not model.native_encoder:
        return tuning.length_buckets
    below = tuple(b for b in GPU_LENGTH_BUCKETS if b < model.max_length)
    return (*below, model.max_length)


def encoder_config(model: ServedModel, tuning: TritonTuning = DEFAULT_TUNING) -> mc.ModelConfig:
    if model.native_encoder:
        return gpu_encoder_config(model, tuning)
    if model.runtime is Runtime.TORCH:
        return torch_encoder_config(model, tuning)
    config = python_encoder(
        model, model.max_batch_size, mc.ModelInstanceGroup.KIND_CPU, tuning.encoder_instances
    )
    dynamic_batching(config, tuning.encoder_queue_delay_us)
    runtime, precision_hint = cpu_runtime(model.precision)
    set_parameters(
        config,
        GraphEncoderParameters(
            runtime=runtime,
            inference_precision=precision_hint,
            intra_op_threads=tuning.intra_op_threads,
            max_attention_cells=tuning.max_attention_cells,
            max_rows_per_run=tuning.max_rows_per_run,
            shared_prefix=model.shared_prefix,
            intra_op_spin_us=tuning.intra_op_spin_us,
        ),
    )
    return config


def python_encoder(
    model: ServedModel, max_batch_size: int, kind: int, instances: int
) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model.encoder_model, backend="python")
    config.max_batch_size = max_batch_size
    for name, data_type in encoder_inputs(model):
        # Ragged: requests padded to different lengths still merge into one execution.
        config.input.add(name=name, data_type=data_type, dims=[-1], allow_ragged_batch=True)
    config.output.add(name=SCORE, data_type=mc.TYPE_FP32, dims=[1])
    group = config.instance_group.add(count=instances, kind=kind)
    if kind == mc.ModelInstanceGroup.KIND_GPU:
        group.gpus.append(0)
    return config


def device_encoder(
    model: ServedModel, tuning: TritonTuning = DEFAULT_TUNING
) -> tuple[mc.ModelConfig, dict[str, Any]]:
    """A Python-backend encoder on the model's device, and the run limits of its
    parameters: on a GPU, a ``KIND_GPU`` instance (the backend tells it its device) merging
    several callers' requests into large ragged executions; on CPU, the CPU encoder's
    batching."""
    gpu = model.device is Device.GPU
    config = python_encoder(
        model,
        max(model.max_batch_size, tuning.torch_gpu_max_batch_size) if gpu else model.max_batch_size,
        mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU,
        tuning.torch_gpu_encoder_instances if gpu else tuning.encoder_instances,
    )
    dynamic_batching(
        config, tuning.torch_gpu_queue_delay_us if gpu else tuning.encoder_queue_delay_us
    )
    if gpu:
        config.dynamic_batching.preferred_batch_size.extend(
            b for b in (64, 128, 256, 512) if b <= config.max_batch_size
        )
    limits = {
        "intra_op_threads": tuning.intra_op_threads,
        "max_attention_cells": tuning.max_attention_cells * (64 if gpu else 1),
        "max_rows_per_run": tuning.torch_gpu_max_rows_per_run if gpu else tuning.max_rows_per_run,
        "max_tokens_per_run": tuning.torch_gpu_max_tokens_per_run if gpu else 0,
        "run_overhead_tokens": tuning.torch_gpu_run_overhead_tokens if gpu else 16.0,
    }
    return config, limits


def torch_encoder_config(
    model: ServedModel, tuning: TritonTuning = DEFAULT_TUNING
) -> mc.ModelConfig:
    """The checkpoint under PyTorch in a Python-backend model on the model's device
    (:func:`device_encoder`), fp32 on CPU."""
    config, limits = device_encoder(model, tuning)
    if model.takes_images and model.device is Device.CPU:
        limits["max_tokens_per_run"] = tuning.vision_max_tokens_per_run
    set_parameters(
        config,
        TorchEncoderParameters(
            runtime=Runtime.TORCH,
            scorer=model.kind,
            torch_dtype=model.precision,
            torch_compile=tuning.torch_compile,
            **limits,
            relevance_tokens=model.relevance_tokens or (),
            shared_prefix=tuning.shared_prefix
            and model.kind is ModelKind.CAUSAL_LM
            and not model.takes_images,
            vision_language=model.takes_images,
        ),
    )
    return config


def gpu_encoder_config(model: ServedModel, tuning: TritonTuning = DEFAULT_TUNING) -> mc.ModelConfig:
    """The same ``model.onnx`` under Triton's ONNX Runtime backend on a GPU, accelerated by
    TensorRT (FP16 for ``precision`` fp16), with the engines cached on a volume so a restart
    does not rebuild them."""
    config = mc.ModelConfig(
        name=model.encoder_model,
        platform="onnxruntime_onnx",
        default_model_filename=ONNX_FILE,
    )
    config.max_batch_size = model.max_batch_size
    for name in model.token_inputs:
        config.input.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    config.output.add(name=model.graph_output, data_type=mc.TYPE_FP32, dims=[1])
    config.instance_group.add(
        count=tuning.encoder_instances, kind=mc.ModelInstanceGroup.KIND_GPU, gpus=[0]
    )
    dynamic_batching(config, tuning.gpu_queue_delay_us)
    config.dynamic_batching.preferred_batch_size.extend(
        b for b in GPU_PREFERRED_BATCH_SIZES if b <= model.max_batch_size
    )
    tensorrt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name="tensorrt"
    )
    fp16 = model.precision is Precision.FP16
    for key, value in {
        "precision_mode": "FP16" if fp16 else "FP32",
        # LayerNorm's mean and variance over a 384-1024 wide row are where an fp16 engine
        # of a BERT-style encoder drifts most; they stay fp32, the rest of the engine fp16.
        **({"trt_layer_norm_fp32_fallback": "true"} if fp16 else {}),
        "max_workspace_size_bytes": str(tuning.tensorrt_workspace_bytes),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": TENSORRT_CACHE,
        **tensorrt_profile(model, tuning),
    }.items():
        tensorrt.parameters[key] = value
    return config


def tensorrt_profile(model: ServedModel, tuning: TritonTuning = DEFAULT_TUNING) -> dict[str, str]:
    """One optimization profile spanning the shapes the tokenizer produces: 1 to
    ``max_batch_size`` rows, padded to the shortest bucket up to the model's max length,
    tuned for half a full batch at a middle bucket."""
    buckets = tokenizer_buckets(model, tuning)
    shapes = {
        "min": (1, buckets[0]),
        "opt": (max(1, model.max_batch_size // 2), buckets[(len(buckets) - 1) // 2]),
        "max": (model.max_batch_size, buckets[-1]),
    }
    return {
        f"trt_profile_{kind}_shapes": ",".join(
            f"{name}:{rows}x{length}" for name in model.token_inputs
        )
        for kind, (rows, length) in shapes.items()
    }


def ensemble_config(model: ServedModel) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model.name, platform="ensemble")
    config.max_batch_size = model.max_batch_size
    string_inputs(config, model)
    config.output.add(name=SCORE, data_type=mc.TYPE_FP32, dims=[1])
    config.output.add(name=TOKENS, data_type=mc.TYPE_INT32, dims=[1])
    tokenize = config.ensemble_scheduling.step.add(
        model_name=model.tokenizer_model, model_version=-1
    )
    encode = config.ensemble_scheduling.step.add(model_name=model.encoder_model, model_version=-1)
    for name in _row_inputs(model):
        tokenize.input_map[name] = name
    for name, _ in encoder_inputs(model):
        tokenize.output_map[name] = name
        encode.input_map[name] = name
    tokenize.output_map[TOKENS] = TOKENS
    encode.output_map[model.graph_output if model.native_encoder else SCORE] = SCORE
    set_parameters(config, EnsembleParameters.of(model))
    return config
