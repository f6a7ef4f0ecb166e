"""What every build path shares: the caller's options, the error a build fails with, progress
output and the facts read from a checkpoint's files."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reranker.builder.triton_configs import TritonTuning
from reranker.contract.model import BUILT_RUNTIMES, SHARED_PREFIX, Device, Precision, Runtime

# The ONNX export a build serves from a directory or hub repository publishing several.
DEFAULT_ONNX_FILE = "model.onnx"
# The device a build may name besides Device's: a GPU where PyTorch sees one, else the CPU.
AUTO_DEVICE = "auto"
# The precisions a build makes (int4 is only ever a publisher's own export, served as it is).
BUILT_PRECISIONS = tuple(p for p in Precision if p is not Precision.INT4)


class BuildError(Exception):
    """The model cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class BuildOptions:
    """What the caller chose; None leaves the choice to the source."""

    name: str
    max_length: int | None = None
    max_batch_size: int = 64
    precision: Precision = Precision.FP32
    # False: ``precision`` is the target's default, which a model may override (a causal LM
    # on a GPU takes bf16: its activations can overflow fp16).
    precision_chosen: bool = True
    device: Device = Device.CPU
    runtime: Runtime = Runtime.ONNX
    # Which of a source's ONNX exports to serve (``onnx/model_quantized.onnx`` and the like).
    onnx_file: str = DEFAULT_ONNX_FILE
    # Passages per query of the accuracy report a reduced precision on CPU writes (20 queries):
    # fewer make a quicker, coarser report.
    accuracy_passages: int = 40
    # Whether the model runs a tokenizer model of the same tokenization that the repository
    # already holds (reranker.builder.sharing) instead of its own.
    share_tokenizer: bool = True
    # How Triton runs it: instances, threads, batching, queue delays.
    tuning: TritonTuning = field(default_factory=TritonTuning)

    def __post_init__(self) -> None:
        if self.runtime not in BUILT_RUNTIMES:
            choices = ", ".join(BUILT_RUNTIMES)
            raise BuildError(f"a build serves runtime {choices}, not {self.runtime}")
        if self.name.startswith(SHARED_PREFIX):
            raise BuildError(
                f"a served model's name may not start with {SHARED_PREFIX!r}: the names of "
                f"shared tokenizer models do, got {self.name!r}"
            )
        if self.accuracy_passages < 1:
            raise BuildError(f"accuracy passages must be at least 1, got {self.accuracy_passages}")

    @classmethod
    def for_target(
        cls,
        name: str,
        device: str = Device.CPU.value,
        runtime: str | None = None,
        precision: str | None = None,
        **chosen: Any,
    ) -> BuildOptions:
        """The options for a device (or ``auto``), a runtime and a precision as a caller
        names them, each left unset taking its target's default: ``auto`` is a GPU when
        PyTorch sees one, served by the torch runtime (the Triton this package ships has no
        onnxruntime backend), else the CPU with ONNX; an explicit ``gpu`` keeps ONNX for the
        NGC Triton unless the torch runtime is asked for. The precision is fp16 for the torch
        runtime on a GPU, else fp32 (a model kind may take another default of its own where
        the caller chose none: :attr:`precision_chosen`)."""
        if device == AUTO_DEVICE:
            import torch

            on_gpu = torch.cuda.is_available()
            device = (Device.GPU if on_gpu else Device.CPU).value
            runtime = runtime or (Runtime.TORCH if on_gpu else Runtime.ONNX).value
        target = Device(device), Runtime(runtime or Runtime.ONNX)
        default = Precision.FP16 if target == (Device.GPU, Runtime.TORCH) else Precision.FP32
        return cls(
            name=name,
            device=target[0],
            runtime=target[1],
            precision=Precision(precision) if precision else default,
            precision_chosen=precision is not None,
            **chosen,
        )


@contextmanager
def step(message: str) -> Iterator[None]:
    """Shows progress of a long build step."""
    print(f"  {message} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"  {message}: done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def max_length(options: BuildOptions, *directories: Path) -> int:
    """Max tokens: the caller's choice, else the tokenizer's, else the position table's."""
    if options.max_length is not None:
        return options.max_length
    for directory in directories:
        limit = read_json(directory / "tokenizer_config.json").get("model_max_length")
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
    for directory in directories:
        positions = read_json(directory / "config.json").get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            return positions
    raise BuildError("cannot tell the model's max length: pass --max-length")


def architecture(config: dict[str, Any], fallback: str) -> str:
    architectures = config.get("architectures") or [fallback]
    return str(architectures[0])


# What sentence-transformers' MultiVectorEncoder loads (builder.late_interaction), told apart
# here without importing what builds it.
_ST_CONFIG = "config_sentence_transformers.json"
_MODEL_TYPES = ("MultiVectorEncoder", "ColBERT")
STANFORD_ARCHITECTURE = "HF_ColBERT"


def is_late_interaction(source: Path) -> bool:
    """Whether ``MultiVectorEncoder`` loads ``source``, as it tells its own kinds apart."""
    st_config = source / _ST_CONFIG
    if st_config.is_file() and read_json(st_config).get("model_type") in _MODEL_TYPES:
        return True
    config = source / "config.json"
    return config.is_file() and STANFORD_ARCHITECTURE in (
        read_json(config).get("architectures") or []
    )
