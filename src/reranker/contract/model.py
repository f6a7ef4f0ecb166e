"""A served model: what describes it, and where its files lie in the model repository.

Each served model NAME is three Triton models:
  NAME             ensemble: QUERY, DOCUMENT (TYPE_STRING [1] per row) -> SCORE (FP32 [1])
  NAME__tokenizer  Python backend: rows -> input_ids / attention_mask / token_type_ids
  NAME__encoder    runtime onnx: on CPU, a Python backend running the ONNX graph in
                   length-sorted micro-batches with ONNX Runtime (fp32, int8) or OpenVINO
                   (bf16) -> SCORE; on GPU, Triton's onnxruntime_onnx platform with TensorRT.
                   runtime torch: a Python backend running the checkpoint with PyTorch in
                   the same micro-batches, on a GPU (fp16, bf16) or on CPU (fp32)
The build writes their configurations; the ensemble's parameters describe the model to the
rank service (:mod:`reranker.contract.parameters`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from pathlib import Path

from reranker.contract.tensors import SCORE

TOKENIZER_SUFFIX = "__tokenizer"
# The name of a tokenizer model several served models share starts so; no served model's does.
SHARED_PREFIX = "shared-"
ENCODER_SUFFIX = "__encoder"
TOKENIZER_FILE = "tokenizer.json"
PROMPT_FILE = "prompt.json"
ONNX_FILE = "model.onnx"
CHECKPOINT_DIR = "checkpoint"
# A vision-language reranker's processor (chat template, tokenizer, image processor), which
# its tokenizer model runs.
PROCESSOR_DIR = "processor"


class ModelKind(enum.StrEnum):
    CROSS_ENCODER = "cross-encoder"
    BI_ENCODER = "bi-encoder"
    # A causal LM scoring the pair inside its prompt by its relevance tokens' logits.
    CAUSAL_LM = "causal-lm"
    # Late interaction (ColBERT): query and documents encoded apart into token vectors,
    # scored by MaxSim.
    LATE_INTERACTION = "late-interaction"


class Device(enum.StrEnum):
    """Where the encoder runs. CPU: a Python-backend model (ONNX Runtime, OpenVINO or
    PyTorch) on ragged batches. GPU: Triton's ``onnxruntime_onnx`` platform with the TensorRT
    execution accelerator on rows the tokenizer pads to length buckets (native backends
    cannot pad ragged batches), or, with the torch runtime, a ``KIND_GPU`` Python-backend
    model running the checkpoint on ragged batches."""

    CPU = "cpu"
    GPU = "gpu"


class Runtime(enum.StrEnum):
    """What runs the encoder. A build serves the ONNX export (run by ONNX Runtime, by
    OpenVINO where the CPU's bf16 asks for it, or by TensorRT on a GPU) or the checkpoint
    itself through PyTorch (the GPU path of a machine with PyTorch and no NGC container)."""

    ONNX = "onnx"
    OPENVINO = "openvino"
    TORCH = "torch"

    @classmethod
    def _missing_(cls, value: object) -> Runtime | None:
        # Repositories built before ONNX Runtime was named "onnx" in the encoder's parameters.
        return cls.ONNX if value == "onnxruntime" else None


# What a build can be asked to serve (OpenVINO is chosen by the precision, not named).
BUILT_RUNTIMES = (Runtime.ONNX, Runtime.TORCH)


class Precision(enum.StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    BF16 = "bf16"
    # Only as a publisher's own export (``model_q4.onnx``) served as it is.
    INT4 = "int4"


class Activation(enum.StrEnum):
    """What turns the encoder's raw output into the default score."""

    SIGMOID = "sigmoid"
    NONE = "none"


class Scoring(enum.StrEnum):
    """How the default score is made, as ``ListModels`` reports it."""

    SIGMOID = "sigmoid"
    LOGIT = "logit"
    COSINE = "cosine"
    LOGIT_DIFF = "logit-diff"
    # The sum over query tokens of each one's best dot product with a document token (or
    # that sum over the query's token count): not a probability, never activated.
    MAXSIM = "maxsim"
    MEAN_MAXSIM = "mean-maxsim"


class PairMode(enum.StrEnum):
    """How the tokenizer model lays out a pair: one joint sequence (cross-encoders), two
    independent ones side by side (bi-encoder pair scorers), or inside a prompt (causal LMs)."""

    JOINT = "joint"
    SEPARATE = "separate"
    PROMPT = "prompt"
    # A vision-language reranker: the pair as query and document messages, text or images,
    # rendered by the checkpoint's own processor.
    MESSAGES = "messages"


# Fields given as plain strings (a checkpoint's config, a test) become their enum here, so a
# bad value fails where the description is made, never on a request.
_ENUM_FIELDS = {
    "kind": ModelKind,
    "activation": Activation,
    "precision": Precision,
    "device": Device,
    "runtime": Runtime,
}


@dataclass(frozen=True)
class ServedModel:
    """What describes a served model: what the build writes and the rank service reads back
    from the ensemble's configuration."""

    name: str
    kind: ModelKind
    architecture: str
    max_length: int
    activation: Activation
    # Token tensors the encoder reads, a subset of tensors.TOKEN_TENSORS.
    token_inputs: tuple[str, ...]
    # Rows one request to the ensemble may carry.
    max_batch_size: int = 64
    precision: Precision = Precision.FP32
    device: Device = Device.CPU
    # The ONNX graph's output, [batch, 1]: a native backend names it as the graph does.
    graph_output: str = SCORE
    runtime: Runtime = Runtime.ONNX
    # The checkpoint's model_type (bert, xlm-roberta, modernbert, ...); "" where unknown.
    family: str = ""
    # Whether the model reads a per-request instruction: a causal-LM reranker whose prompt
    # has a slot for one.
    takes_instruction: bool = False
    # A causal-LM reranker's (relevant, irrelevant) token ids: what its PyTorch encoder scores.
    relevance_tokens: tuple[int, int] | None = None
    # Whether a causal-LM reranker renders the pair in its chat template; one without a
    # template reads the pair as a text pair, as a cross-encoder does.
    templated: bool = True
    # Whether a causal-LM reranker's graph takes the prompt prefix its rows share apart
    # (tensors.PREFIX_IDS) and runs it once per run.
    shared_prefix: bool = False
    # Whether queries and documents may be images (a vision-language reranker).
    takes_images: bool = False
    # Whether the ensemble reports each row's tokens (every build since it could; a model
    # built before reports none, and its calls' usage counts 0).
    counts_tokens: bool = True
    # The tokenizer model its ensemble runs, where that is one it shares with other served
    # models of the same tokenization ("": its own, NAME__tokenizer).
    tokenizer: str = ""
    # Whether a late-interaction reranker divides MaxSim by the query's scored tokens
    # (sentence-transformers' "meanmaxsim").
    mean_maxsim: bool = False

    def __post_init__(self) -> None:
        for field in fields(self):
            kind = _ENUM_FIELDS.get(field.name)
            value = getattr(self, field.name)
            if kind is not None and not isinstance(value, kind):
                try:
                    object.__setattr__(self, field.name, kind(value))
                except ValueError:
                    choices = ", ".join(member.value for member in kind)
                    raise ValueError(
                        f"model {self.name!r}: {field.name} must be one of {choices}, got {value!r}"
                    ) from None
        if self.max_length < 1 or self.max_batch_size < 1:
            raise ValueError(
                f"model {self.name!r}: max_length and max_batch_size must be >= 1, got "
                f"{self.max_length} and {self.max_batch_size}"
            )

    @property
    def scoring(self) -> Scoring:
        if self.kind is ModelKind.BI_ENCODER:
            return Scoring.COSINE
        if self.kind is ModelKind.CAUSAL_LM:
            return Scoring.LOGIT_DIFF
        if self.kind is ModelKind.LATE_INTERACTION:
            return Scoring.MEAN_MAXSIM if self.mean_maxsim else Scoring.MAXSIM
        return Scoring.SIGMOID if self.activation is Activation.SIGMOID else Scoring.LOGIT

    @property
    def native_encoder(self) -> bool:
        """Whether Triton's own onnxruntime backend runs the encoder (the NGC GPU path),
        rather than one of our Python-backend encoders."""
        return self.device is Device.GPU and self.runtime is Runtime.ONNX

    @property
    def modalities(self) -> tuple[str, ...]:
        """What a query or document may be, as ``ListModels`` reports it."""
        return ("text", "image") if self.takes_images else ("text",)

    @property
    def pair_mode(self) -> PairMode:
        if self.takes_images:
            return PairMode.MESSAGES
        if self.kind is ModelKind.CAUSAL_LM and self.templated:
            return PairMode.PROMPT
        return PairMode.SEPARATE if self.kind is ModelKind.BI_ENCODER else PairMode.JOINT

    @property
    def tokenizer_model(self) -> str:
        return self.tokenizer or self.name + TOKENIZER_SUFFIX

    @property
    def encoder_model(self) -> str:
        return self.name + ENCODER_SUFFIX


def tokenizer_path(model: ServedModel, repository: Path) -> Path:
    return repository / model.tokenizer_model / "1" / TOKENIZER_FILE


def onnx_path(model: ServedModel, repository: Path) -> Path:
    return repository / model.encoder_model / "1" / ONNX_FILE


def checkpoint_path(model: ServedModel, repository: Path) -> Path:
    """Where the PyTorch runtime's checkpoint lives, beside the encoder's ``model.py``."""
    return repository / model.encoder_model / "1" / CHECKPOINT_DIR
