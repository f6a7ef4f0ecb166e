"""Layout of one served model in the model repository, and what describes it.

Each served model NAME is three Triton models:
  NAME             ensemble: QUERY, DOCUMENT (TYPE_STRING [1] per row) -> SCORE (FP32 [1])
  NAME__tokenizer  Python backend: rows -> input_ids / attention_mask / token_type_ids
  NAME__encoder    runtime onnx: on CPU, a Python backend running the ONNX graph in
                   length-sorted micro-batches with ONNX Runtime (fp32, int8) or OpenVINO
                   (bf16) -> SCORE; on GPU, Triton's onnxruntime_onnx platform with TensorRT.
                   runtime torch: a Python backend running the checkpoint with PyTorch in
                   the same micro-batches, on a GPU (fp16, bf16) or on CPU (fp32)
Their configurations come from :mod:`reranker.triton_configs`; the ensemble's ``parameters``
describe the model to the rank service.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf import text_format

from reranker.contract import SCORE
from reranker.tokenization import PairMode

if TYPE_CHECKING:
    from reranker.triton_configs import TritonTuning

TOKENIZER_SUFFIX = "__tokenizer"
ENCODER_SUFFIX = "__encoder"
TOKENIZER_FILE = "tokenizer.json"
PROMPT_FILE = "prompt.json"
ONNX_FILE = "model.onnx"
CHECKPOINT_DIR = "checkpoint"


class ModelKind(enum.StrEnum):
    CROSS_ENCODER = "cross-encoder"
    BI_ENCODER = "bi-encoder"
    # A causal LM scoring the pair inside its prompt by its relevance tokens' logits.
    CAUSAL_LM = "causal-lm"


class Device(enum.StrEnum):
    """Where the encoder runs. CPU: a Python-backend model running ONNX Runtime (or
    OpenVINO) on ragged batches (the Triton of the nvidia-pytriton wheel has no ONNX Runtime
    backend). GPU: Triton's ``onnxruntime_onnx`` platform with the TensorRT execution
    accelerator, on rows the tokenizer pads to length buckets (native backends cannot pad
    ragged batches)."""

    CPU = "cpu"
    GPU = "gpu"


class EncoderRuntime(enum.StrEnum):
    """What the encoder serves: the ONNX export, or the checkpoint itself through PyTorch
    (the GPU path of a machine with PyTorch and no NGC container)."""

    ONNX = "onnx"
    TORCH = "torch"


@dataclass(frozen=True)
class ServedModel:
    """What describes a served model: what the builder writes and the rank service reads
    back from the ensemble's configuration (:func:`reranker.triton_configs.describe`). How
    Triton runs it is :class:`reranker.triton_configs.TritonTuning`."""

    name: str
    kind: ModelKind
    architecture: str
    max_length: int
    # "sigmoid" or "none": what turns the encoder's raw output into the default score.
    activation: str
    # Token tensors the ONNX graph reads, a subset of contract.TOKEN_TENSORS.
    token_inputs: tuple[str, ...]
    # Rows one request to the ensemble may carry.
    max_batch_size: int = 64
    precision: str = "fp32"
    device: Device = Device.CPU
    # The ONNX graph's output, [batch, 1]: a native backend names it as the graph does.
    graph_output: str = SCORE
    runtime: EncoderRuntime = EncoderRuntime.ONNX
    # The checkpoint's model_type (bert, xlm-roberta, modernbert, ...); "" where unknown.
    family: str = ""
    # Whether the model reads a per-request instruction: a causal-LM reranker whose prompt
    # has a slot for one.
    takes_instruction: bool = False
    # A causal-LM reranker's (relevant, irrelevant) token ids: what its PyTorch encoder scores.
    relevance_tokens: tuple[int, int] | None = None

    @property
    def scoring(self) -> str:
        """How the default score is made: sigmoid of a logit, the logit, or a cosine."""
        if self.kind is ModelKind.BI_ENCODER:
            return "cosine"
        if self.kind is ModelKind.CAUSAL_LM:
            return "logit-diff"
        return "sigmoid" if self.activation == "sigmoid" else "logit"

    @property
    def native_encoder(self) -> bool:
        """Whether Triton's own onnxruntime backend runs the encoder (the NGC GPU path),
        rather than one of our Python-backend encoders."""
        return self.device is Device.GPU and self.runtime is EncoderRuntime.ONNX

    @property
    def pair_mode(self) -> PairMode:
        if self.kind is ModelKind.CAUSAL_LM:
            return PairMode.PROMPT
        return PairMode.SEPARATE if self.kind is ModelKind.BI_ENCODER else PairMode.JOINT

    @property
    def tokenizer_model(self) -> str:
        return self.name + TOKENIZER_SUFFIX

    @property
    def encoder_model(self) -> str:
        return self.name + ENCODER_SUFFIX


_MODEL_PY = '''"""Triton entry point of the {role} model; the logic lives in {module}."""

from {module} import TritonPythonModel

__all__ = ["TritonPythonModel"]
'''


def write_configs(model: ServedModel, repository: Path, tuning: TritonTuning | None = None) -> None:
    """Writes the three models' configurations and entry points (artifacts are separate)."""
    from reranker.triton_configs import (
        TritonTuning,
        encoder_config,
        ensemble_config,
        tokenizer_config,
    )

    tuning = tuning or TritonTuning()
    encoder_module = None if model.native_encoder else "reranker.triton_models.encoder"
    entries = [
        (model.name, ensemble_config(model), None),
        (
            model.tokenizer_model,
            tokenizer_config(model, tuning),
            "reranker.triton_models.tokenizer",
        ),
        (model.encoder_model, encoder_config(model, tuning), encoder_module),
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


def checkpoint_path(model: ServedModel, repository: Path) -> Path:
    """Where the PyTorch runtime's checkpoint lives, beside the encoder's ``model.py``."""
    return repository / model.encoder_model / "1" / CHECKPOINT_DIR
