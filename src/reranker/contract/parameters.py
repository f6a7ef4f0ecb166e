"""The typed ``parameters`` of each Triton model a served model is made of: one definition per
role, which the build serialises into ``config.pbtxt`` and the reader (the model's
``initialize``, or the rank service for the ensemble) parses back once.

Triton hands parameters over as strings. :func:`to_parameters` and :func:`from_parameters`
convert a parameter dataclass to and from them by its field types (str, int, float, bool,
an enum, a tuple of ints), so neither side compares string literals, and a bad value fails
at build or load time with a message that names the model and the key.
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, TypeVar

from reranker.contract.model import (
    CHECKPOINT_DIR,
    ONNX_FILE,
    PROCESSOR_DIR,
    TOKENIZER_FILE,
    TOKENIZER_SUFFIX,
    Activation,
    Device,
    ModelKind,
    PairMode,
    Precision,
    Runtime,
    ServedModel,
)
from reranker.contract.tensors import SCORE, TOKEN_TENSORS, TOKENS


class ParameterError(ValueError):
    """A model parameter is missing or has a value its reader cannot take."""


class PrecisionHint(enum.StrEnum):
    """OpenVINO's ``INFERENCE_PRECISION_HINT`` for the fp32 graph it runs."""

    F32 = "f32"
    BF16 = "bf16"


class TorchCompile(enum.StrEnum):
    """How the PyTorch encoder's forward runs: eagerly, or compiled by ``torch.compile``
    (with CUDA graphs per shape in ``reduce-overhead`` mode)."""

    EAGER = "eager"
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"


TORCH_PRECISIONS = frozenset({Precision.FP32, Precision.FP16, Precision.BF16})


@dataclass(frozen=True)
class TokenizerParameters:
    max_length: int
    pair_mode: PairMode
    # Characters kept of each text before tokenizing (see tensors.max_chars).
    max_chars: int
    tokenizer_file: str = TOKENIZER_FILE
    # Lengths rows are padded up to (ascending); empty pads to each request's longest row.
    length_buckets: tuple[int, ...] = ()
    # A causal-LM reranker's prompt (pair mode PROMPT), beside the tokenizer.
    prompt_file: str = ""

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_length", "max_chars")
        if any(b < 1 for b in self.length_buckets):
            raise ParameterError(f"length_buckets must be positive, got {self.length_buckets}")
        object.__setattr__(self, "length_buckets", tuple(sorted(self.length_buckets)))
        if (self.pair_mode is PairMode.PROMPT) != bool(self.prompt_file):
            raise ParameterError("prompt_file is set exactly when pair_mode is prompt")


@dataclass(frozen=True)
class ProcessorParameters:
    """A vision-language reranker's tokenizer model: the checkpoint's own processor renders
    each pair's messages, decodes and patches its images."""

    # Tokens a row may hold, its image tokens included; a longer row is refused.
    max_length: int
    processor_dir: str = PROCESSOR_DIR
    # Threads of the processor's image operations (0: torch's default, every core).
    intra_op_threads: int = 1

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_length")
        _at_least(self, 0, "intra_op_threads")


# Microseconds: covers the gap between a call's back-to-back runs.
INTRA_OP_SPIN_US = 500


@dataclass(frozen=True)
class EncoderParameters:
    """The Python-backend encoder: what runs it, and how merged rows are cut into runs."""

    runtime: Runtime
    # Attention cells (rows x length^2) one run may hold; a longer row runs alone.
    max_attention_cells: int
    # Rows one run holds at most; within it the split minimizes padding cost.
    max_rows_per_run: int
    # Intra-op threads of the runtime (0: its own default).
    intra_op_threads: int = 0
    # Padded tokens one run holds at most (0: no cap).
    max_tokens_per_run: int = 0
    # A run's fixed cost, in tokens' work.
    run_overhead_tokens: float = 16.0

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_attention_cells", "max_rows_per_run")
        _at_least(self, 0, "intra_op_threads", "max_tokens_per_run", "run_overhead_tokens")


@dataclass(frozen=True)
class GraphEncoderParameters(EncoderParameters):
    """An encoder running the ONNX graph with ONNX Runtime or OpenVINO."""

    onnx_file: str = ONNX_FILE
    inference_precision: PrecisionHint = PrecisionHint.F32
    # The graph takes the rows' shared prompt prefix apart (tensors.PREFIX_IDS).
    shared_prefix: bool = False
    # How long ONNX Runtime's idle worker threads busy-wait for work before they sleep.
    intra_op_spin_us: int = INTRA_OP_SPIN_US

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 0, "intra_op_spin_us")
        if self.runtime is Runtime.TORCH:
            raise ParameterError("a graph encoder runs onnxruntime or openvino, not torch")


@dataclass(frozen=True)
class TorchEncoderParameters(EncoderParameters):
    """An encoder running the checkpoint itself with PyTorch."""

    checkpoint_dir: str = CHECKPOINT_DIR
    scorer: ModelKind = ModelKind.CROSS_ENCODER
    torch_dtype: Precision = Precision.FP32
    torch_compile: TorchCompile = TorchCompile.EAGER
    # A causal LM's (relevant, irrelevant) token ids; empty for other kinds.
    relevance_tokens: tuple[int, ...] = ()
    # A causal LM's rows that begin with one prompt run it once (its keys and values reused).
    shared_prefix: bool = False
    # A vision-language causal LM: rows carry images (tensors.VISION_TOKEN_TENSORS, PIXEL_VALUES).
    vision_language: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.runtime is not Runtime.TORCH:
            raise ParameterError(f"a torch encoder has runtime torch, got {self.runtime}")
        if self.torch_dtype not in TORCH_PRECISIONS:
            raise ParameterError(f"torch_dtype must be fp32, fp16 or bf16, got {self.torch_dtype}")
        if (self.scorer is ModelKind.CAUSAL_LM) != (len(self.relevance_tokens) == 2) or len(
            self.relevance_tokens
        ) not in (0, 2):
            raise ParameterError(
                "relevance_tokens holds two token ids exactly for a causal-lm scorer, got "
                f"{self.relevance_tokens} for {self.scorer}"
            )


class QueryExpansion(enum.StrEnum):
    """How a late-interaction reranker widens a short query with its expansion token
    (``[MASK]``), as sentence-transformers' ``query_expansion`` does: not at all, to exactly
    the width (``fixed``: a longer query is cut to it), or to at least the width (``min``)."""

    NONE = "none"
    FIXED = "fixed"
    MIN = "min"


@dataclass(frozen=True)
class LateTokenizerParameters:
    """A late-interaction reranker's tokenizer model: the query and the document of a row
    tokenized apart, each with its own prefix and length."""

    # Tokens a query or a document may hold, special tokens and prefix included.
    query_length: int
    document_length: int
    # Characters kept of each text before tokenizing (see tensors.max_chars).
    max_chars: int
    query_prefix: str = ""
    document_prefix: str = ""
    expansion: QueryExpansion = QueryExpansion.NONE
    # The width an expanded query reaches.
    expansion_length: int = 0
    expansion_token_id: int = 0
    # Whether the encoder attends to the expansion tokens (MaxSim scores them either way).
    attend_to_expansion: bool = False
    # Token ids MaxSim leaves out of the texts of the roles named below.
    skiplist_ids: tuple[int, ...] = ()
    skiplist_documents: bool = True
    skiplist_queries: bool = False
    tokenizer_file: str = TOKENIZER_FILE
    length_buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _at_least(self, 1, "query_length", "document_length", "max_chars")
        _at_least(self, 0, "expansion_length", "expansion_token_id")
        expanded = self.expansion is not QueryExpansion.NONE
        if expanded != (self.expansion_length > 0):
            raise ParameterError("expansion_length is set exactly when queries are expanded")
        if self.expansion is QueryExpansion.FIXED and self.expansion_length != self.query_length:
            raise ParameterError("a fixed expansion's length is the query length")


# Bytes of query vectors an encoder instance keeps (256 queries of 32 tokens x 128 dims): a
# call split into several requests encodes its query once.
QUERY_CACHE_BYTES = 4 << 20


@dataclass(frozen=True)
class LateEncoderParameters(EncoderParameters):
    """A late-interaction reranker's encoder: the ONNX graph (backbone, projection,
    normalization) run by ONNX Runtime, or the checkpoint and projection run by PyTorch, on
    queries and documents, then MaxSim."""

    onnx_file: str = ONNX_FILE
    # The PyTorch runtime's backbone checkpoint and projection (its graph is the ONNX one's).
    checkpoint_dir: str = CHECKPOINT_DIR
    torch_dtype: Precision = Precision.FP32
    mean_maxsim: bool = False
    # Bytes of document vectors kept (least recently used first out; 0: no cache).
    document_cache_bytes: int = 0
    query_cache_bytes: int = QUERY_CACHE_BYTES
    intra_op_spin_us: int = INTRA_OP_SPIN_US

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 0, "document_cache_bytes", "query_cache_bytes", "intra_op_spin_us")
        if self.runtime not in (Runtime.ONNX, Runtime.TORCH):
            raise ParameterError(
                f"a late-interaction encoder runs onnx or torch, got {self.runtime}"
            )
        if self.torch_dtype not in TORCH_PRECISIONS:
            raise ParameterError(f"torch_dtype must be fp32, fp16 or bf16, got {self.torch_dtype}")


@dataclass(frozen=True)
class EnsembleParameters:
    """What describes a served model to the rank service, on its ensemble."""

    reranker_kind: ModelKind
    architecture: str
    max_length: int
    activation: Activation
    precision: Precision = Precision.FP32
    device: Device = Device.CPU
    runtime: Runtime = Runtime.ONNX
    family: str = ""
    takes_instruction: bool = False
    takes_images: bool = False
    mean_maxsim: bool = False

    @classmethod
    def of(cls, model: ServedModel) -> EnsembleParameters:
        described = {field.name: getattr(model, field.name) for field in _DESCRIBED}
        return cls(reranker_kind=model.kind, **described)

    def served_model(
        self,
        name: str,
        max_batch_size: int,
        tokenizer_outputs: typing.Iterable[str],
        graph_output: str = SCORE,
        tokenizer: str = "",
    ) -> ServedModel:
        outputs = set(tokenizer_outputs)
        return ServedModel(
            name=name,
            tokenizer="" if tokenizer == name + TOKENIZER_SUFFIX else tokenizer,
            kind=self.reranker_kind,
            token_inputs=tuple(name for name in TOKEN_TENSORS if name in outputs),
            max_batch_size=max_batch_size,
            graph_output=graph_output,
            counts_tokens=TOKENS in outputs,
            **{field.name: getattr(self, field.name) for field in _DESCRIBED},
        )


# The fields an ensemble's parameters and its served model share by name (the kind is
# ``reranker_kind`` on the ensemble, so it is not taken for any other model's parameter).
_DESCRIBED = tuple(field for field in fields(EnsembleParameters) if field.name != "reranker_kind")


# The key that marks an ensemble as one of this server's served models.
SERVED_MODEL_KEY = "reranker_kind"

_BOOLEANS = {"true": True, "false": False}
Params = TypeVar("Params")


def to_parameters(values: Any) -> dict[str, str]:
    """A parameter dataclass as Triton's string parameters."""
    return {field.name: _encode(getattr(values, field.name)) for field in fields(values)}


def from_parameters(kind: type[Params], raw: Mapping[str, str], model: str) -> Params:
    """Parses ``raw`` (a model's string parameters) into ``kind``; keys it does not define are
    left to whoever reads them (Triton's own, such as ``EXECUTION_ENV_PATH``).

    Raises:
        ParameterError: a key is missing or a value cannot be read, naming model and key.
    """
    hints = typing.get_type_hints(kind)
    values: dict[str, Any] = {}
    for field in fields(kind):  # type: ignore[arg-type]
        if field.name not in raw:
            if field.default is MISSING:
                raise ParameterError(f"model {model}: parameter {field.name!r} is required")
            continue
        try:
            values[field.name] = _decode(raw[field.name], hints[field.name])
        except ValueError as error:
            raise ParameterError(
                f"model {model}: parameter {field.name}={raw[field.name]!r}: {error}"
            ) from None
    try:
        return kind(**values)
    except ParameterError as error:
        raise ParameterError(f"model {model}: {error}") from None


def _encode(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, tuple):
        return ",".join(str(int(item)) for item in value)
    return str(value)


def _decode(text: str, kind: Any) -> object:
    if kind is bool:
        if text not in _BOOLEANS:
            raise ValueError("expected true or false")
        return _BOOLEANS[text]
    if kind in (int, float, str):
        return kind(text)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(
                "expected one of " + ", ".join(str(member.value) for member in kind)
            ) from None
    if typing.get_origin(kind) is tuple:
        return tuple(int(part) for part in text.split(",") if part.strip())
    raise TypeError(f"no parameter codec for {kind}")  # a definition error, not a value's


def _at_least(values: object, minimum: float, *names: str) -> None:
    for name in names:
        if getattr(values, name) < minimum:
            raise ParameterError(f"{name} must be >= {minimum}, got {getattr(values, name)}")
