"""Layout and Triton configuration of one served model in the model repository.

Each served model NAME is three Triton models:
  NAME             ensemble: QUERY, DOCUMENT (TYPE_STRING [1] per row) -> SCORE (FP32 [1])
  NAME__tokenizer  Python backend: rows -> input_ids / attention_mask / token_type_ids
  NAME__encoder    on CPU, a Python backend running the ONNX graph in length-sorted
                   micro-batches with ONNX Runtime (fp32, int8) or OpenVINO (bf16) -> SCORE;
                   on GPU, Triton's onnxruntime_onnx platform with TensorRT
The ensemble's ``parameters`` describe the model to the rank service.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from reranker.contract import DOCUMENT, QUERY, SCORE, max_chars
from reranker.runtimes import cpu_runtime
from reranker.tokenization import PairMode

TOKENIZER_SUFFIX = "__tokenizer"
ENCODER_SUFFIX = "__encoder"
TOKENIZER_FILE = "tokenizer.json"
ONNX_FILE = "model.onnx"


class ModelKind(enum.StrEnum):
    CROSS_ENCODER = "cross-encoder"
    BI_ENCODER = "bi-encoder"


class Device(enum.StrEnum):
    """Where the encoder runs. CPU: a Python-backend model running ONNX Runtime on ragged
    batches (the Triton of the nvidia-pytriton wheel has no ONNX Runtime backend). GPU: Triton's
    ``onnxruntime_onnx`` platform with the TensorRT execution accelerator, on rows the
    tokenizer pads to length buckets (native backends cannot pad ragged batches)."""

    CPU = "cpu"
    GPU = "gpu"


# Padded lengths on GPU: every distinct length is another TensorRT engine shape, and only
# requests of equal shape are batched together.
GPU_LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
GPU_PREFERRED_BATCH_SIZES = (8, 16, 32, 64, 128)
TENSORRT_CACHE = "/engine_cache"


@dataclass(frozen=True)
class ServedModel:
    """Everything the repository needs to know to serve one model."""

    name: str
    kind: ModelKind
    architecture: str
    max_length: int
    # "sigmoid" or "none": what turns the encoder's raw output into the default score.
    activation: str
    # Token tensors the ONNX graph reads, a subset of contract.TOKEN_TENSORS.
    token_inputs: tuple[str, ...]
    max_batch_size: int = 64
    precision: str = "fp32"
    length_buckets: tuple[int, ...] = ()
    tokenizer_instances: int = 1
    encoder_instances: int = 1
    intra_op_threads: int = 2
    # Attention cells (rows x length^2) one runtime call may hold, so a batch of long rows
    # cannot exhaust memory: 2^22 is 16 rows of 512 tokens; a longer row runs alone.
    max_attention_cells: int = 1 << 22
    # Rows one runtime call runs at most; within it the split minimizes padding cost
    # (larger caps gained nothing: docs/benchmark.md, levers).
    max_rows_per_run: int = 16
    tokenizer_queue_delay_us: int = 500
    encoder_queue_delay_us: int = 2000
    device: Device = Device.CPU
    # The ONNX graph's output, [batch, 1]: a native backend names it as the graph does.
    graph_output: str = SCORE
    gpu_queue_delay_us: int = 1000
    tensorrt_workspace_bytes: int = 1 << 31
    # Tokenizing runs on CPU beside a GPU that scores thousands of rows a second.
    gpu_tokenizer_instances: int = 4

    @property
    def pair_mode(self) -> PairMode:
        return PairMode.SEPARATE if self.kind is ModelKind.BI_ENCODER else PairMode.JOINT

    @property
    def tokenizer_model(self) -> str:
        return self.name + TOKENIZER_SUFFIX

    @property
    def encoder_model(self) -> str:
        return self.name + ENCODER_SUFFIX


def _parameters(config: mc.ModelConfig, values: Mapping[str, object]) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def _string_inputs(config: mc.ModelConfig) -> None:
    for name in (QUERY, DOCUMENT):
        config.input.add(name=name, data_type=mc.TYPE_STRING, dims=[1])


def _dynamic_batching(config: mc.ModelConfig, model: ServedModel, queue_delay_us: int) -> None:
    batching = config.dynamic_batching
    batching.max_queue_delay_microseconds = queue_delay_us
    # No ``default_queue_policy``: with one (a queue size, per-request timeouts) Triton 2.51's
    # batcher held tokenizer requests in the queue for tens of milliseconds instead of a few
    # (docs/benchmark.md, levers). The rank service bounds the work it sends
    # (max_rows_in_flight) and each request's time (its gRPC deadline).


def tokenizer_config(model: ServedModel) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model.tokenizer_model, backend="python")
    config.max_batch_size = model.max_batch_size
    _string_inputs(config)
    for name in model.token_inputs:
        config.output.add(name=name, data_type=mc.TYPE_INT64, dims=[-1])
    instances = (
        model.gpu_tokenizer_instances if model.device is Device.GPU else model.tokenizer_instances
    )
    config.instance_group.add(count=instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    _dynamic_batching(config, model, model.tokenizer_queue_delay_us)
    _parameters(
        config,
        {
            "tokenizer_file": TOKENIZER_FILE,
            "max_length": model.max_length,
            "pair_mode": model.pair_mode.value,
            "max_chars": max_chars(model.max_length),
            "length_buckets": ",".join(str(b) for b in tokenizer_buckets(model)),
        },
    )
    return config


def tokenizer_buckets(model: ServedModel) -> tuple[int, ...]:
    """The tokenizer's padded lengths: the model's own, or on GPU a fixed set up to its
    max length (CPU pads each merged batch to its longest row instead)."""
    if model.length_buckets or model.device is Device.CPU:
        return model.length_buckets
    below = tuple(b for b in GPU_LENGTH_BUCKETS if b < model.max_length)
    return (*below, model.max_length)


def encoder_config(model: ServedModel) -> mc.ModelConfig:
    if model.device is Device.GPU:
        return gpu_encoder_config(model)
    config = mc.ModelConfig(name=model.encoder_model, backend="python")
    config.max_batch_size = model.max_batch_size
    for name in model.token_inputs:
        # Ragged: requests padded to different lengths still merge into one execution.
        config.input.add(name=name, data_type=mc.TYPE_INT64, dims=[-1], allow_ragged_batch=True)
    config.output.add(name=SCORE, data_type=mc.TYPE_FP32, dims=[1])
    config.instance_group.add(count=model.encoder_instances, kind=mc.ModelInstanceGroup.KIND_CPU)
    _dynamic_batching(config, model, model.encoder_queue_delay_us)
    runtime, precision_hint = cpu_runtime(model.precision)
    _parameters(
        config,
        {
            "onnx_file": ONNX_FILE,
            "runtime": runtime.value,
            "inference_precision": precision_hint,
            "intra_op_threads": model.intra_op_threads,
            "max_attention_cells": model.max_attention_cells,
            "max_rows_per_run": model.max_rows_per_run,
        },
    )
    return config


def gpu_encoder_config(model: ServedModel) -> mc.ModelConfig:
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
        count=model.encoder_instances, kind=mc.ModelInstanceGroup.KIND_GPU, gpus=[0]
    )
    _dynamic_batching(config, model, model.gpu_queue_delay_us)
    config.dynamic_batching.preferred_batch_size.extend(
        b for b in GPU_PREFERRED_BATCH_SIZES if b <= model.max_batch_size
    )
    tensorrt = config.optimization.execution_accelerators.gpu_execution_accelerator.add(
        name="tensorrt"
    )
    for key, value in {
        "precision_mode": "FP16" if model.precision == "fp16" else "FP32",
        "max_workspace_size_bytes": str(model.tensorrt_workspace_bytes),
        "trt_engine_cache_enable": "true",
        "trt_engine_cache_path": TENSORRT_CACHE,
        **tensorrt_profile(model),
    }.items():
        tensorrt.parameters[key] = value
    return config


def tensorrt_profile(model: ServedModel) -> dict[str, str]:
    """One optimization profile spanning the shapes the tokenizer produces: 1 to
    ``max_batch_size`` rows, padded to the shortest bucket up to the model's max length,
    tuned for half a full batch at a middle bucket."""
    buckets = tokenizer_buckets(model)
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
    _string_inputs(config)
    config.output.add(name=SCORE, data_type=mc.TYPE_FP32, dims=[1])
    tokenize = config.ensemble_scheduling.step.add(
        model_name=model.tokenizer_model, model_version=-1
    )
    encode = config.ensemble_scheduling.step.add(model_name=model.encoder_model, model_version=-1)
    for name in (QUERY, DOCUMENT):
        tokenize.input_map[name] = name
    for name in model.token_inputs:
        tokenize.output_map[name] = name
        encode.input_map[name] = name
    encode.output_map[model.graph_output if model.device is Device.GPU else SCORE] = SCORE
    _parameters(
        config,
        {
            "reranker_kind": model.kind.value,
            "architecture": model.architecture,
            "max_length": model.max_length,
            "activation": model.activation,
            "precision": model.precision,
            "device": model.device.value,
        },
    )
    return config


def describe(config: mc.ModelConfig) -> ServedModel | None:
    """Reads a served model back from its ensemble's configuration (None if not one of ours)."""
    params = {key: value.string_value for key, value in config.parameters.items()}
    if config.platform != "ensemble" or "reranker_kind" not in params:
        return None
    return ServedModel(
        name=config.name,
        kind=ModelKind(params["reranker_kind"]),
        architecture=params["architecture"],
        max_length=int(params["max_length"]),
        activation=params["activation"],
        token_inputs=tuple(sorted(config.ensemble_scheduling.step[0].output_map.keys())),
        max_batch_size=config.max_batch_size,
        precision=params.get("precision", "fp32"),
        device=Device(params.get("device", Device.CPU.value)),
    )


_MODEL_PY = '''"""Triton entry point of the {role} model; the logic lives in {module}."""

from {module} import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


def write_configs(model: ServedModel, repository: Path) -> None:
    """Writes the three models' configurations and entry points (artifacts are separate)."""
    encoder_module = "reranker.triton_models.encoder" if model.device is Device.CPU else None
    entries = [
        (model.name, ensemble_config(model), None),
        (model.tokenizer_model, tokenizer_config(model), "reranker.triton_models.tokenizer"),
        (model.encoder_model, encoder_config(model), encoder_module),
    ]
    for directory, config, module in entries:
        version = repository / directory / "1"
        version.mkdir(parents=True, exist_ok=True)
        (repository / directory / "config.pbtxt").write_text(text_format.MessageToString(config))
        if module is not None:
            role = module.rsplit(".", 1)[1]
            (version / "model.py").write_text(_MODEL_PY.format(role=role, module=module))
        else:
            (version / "model.py").unlink(missing_ok=True)


def tokenizer_path(model: ServedModel, repository: Path) -> Path:
    return repository / model.tokenizer_model / "1" / TOKENIZER_FILE


def onnx_path(model: ServedModel, repository: Path) -> Path:
    return repository / model.encoder_model / "1" / ONNX_FILE
