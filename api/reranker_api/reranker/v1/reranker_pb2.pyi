from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Truncation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRUNCATION_UNSPECIFIED: _ClassVar[Truncation]
    TRUNCATION_LONGEST_FIRST: _ClassVar[Truncation]
    TRUNCATION_REFUSE: _ClassVar[Truncation]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_CROSS_ENCODER: _ClassVar[ModelKind]
    MODEL_KIND_BI_ENCODER: _ClassVar[ModelKind]
    MODEL_KIND_CAUSAL_LM: _ClassVar[ModelKind]
    MODEL_KIND_LATE_INTERACTION: _ClassVar[ModelKind]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_LOADED: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_UNLOADED: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]
TRUNCATION_UNSPECIFIED: Truncation
TRUNCATION_LONGEST_FIRST: Truncation
TRUNCATION_REFUSE: Truncation
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_CROSS_ENCODER: ModelKind
MODEL_KIND_BI_ENCODER: ModelKind
MODEL_KIND_CAUSAL_LM: ModelKind
MODEL_KIND_LATE_INTERACTION: ModelKind
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_LOADED: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_UNLOADED: ModelState
MODEL_STATE_FAILED: ModelState

class RankRequest(_message.Message):
    __slots__ = ("query", "documents", "model", "top_k", "return_documents", "raw_scores", "truncation", "max_document_tokens", "chunking", "instruction", "document_images", "query_image", "priority")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RETURN_DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    RAW_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    MAX_DOCUMENT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_IMAGES_FIELD_NUMBER: _ClassVar[int]
    QUERY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    query: str
    documents: _containers.RepeatedScalarFieldContainer[str]
    model: str
    top_k: int
    return_documents: bool
    raw_scores: bool
    truncation: Truncation
    max_document_tokens: int
    chunking: Chunking
    instruction: str
    document_images: _containers.RepeatedCompositeFieldContainer[Image]
    query_image: Image
    priority: int
    def __init__(self, query: _Optional[str] = ..., documents: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., top_k: _Optional[int] = ..., return_documents: bool = ..., raw_scores: bool = ..., truncation: _Optional[_Union[Truncation, str]] = ..., max_document_tokens: _Optional[int] = ..., chunking: _Optional[_Union[Chunking, _Mapping]] = ..., instruction: _Optional[str] = ..., document_images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., query_image: _Optional[_Union[Image, _Mapping]] = ..., priority: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("data", "media_type")
    DATA_FIELD_NUMBER: _ClassVar[int]
    MEDIA_TYPE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    media_type: str
    def __init__(self, data: _Optional[bytes] = ..., media_type: _Optional[str] = ...) -> None: ...

class Chunking(_message.Message):
    __slots__ = ("enabled", "overlap_tokens", "max_chunks")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    overlap_tokens: int
    max_chunks: int
    def __init__(self, enabled: bool = ..., overlap_tokens: _Optional[int] = ..., max_chunks: _Optional[int] = ...) -> None: ...

class RankResult(_message.Message):
    __slots__ = ("index", "score", "text", "image")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    score: float
    text: str
    image: Image
    def __init__(self, index: _Optional[int] = ..., score: _Optional[float] = ..., text: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class RankMetadata(_message.Message):
    __slots__ = ("pairs", "inference_requests", "inference_time_us", "total_time_us")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIME_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TIME_US_FIELD_NUMBER: _ClassVar[int]
    pairs: int
    inference_requests: int
    inference_time_us: int
    total_time_us: int
    def __init__(self, pairs: _Optional[int] = ..., inference_requests: _Optional[int] = ..., inference_time_us: _Optional[int] = ..., total_time_us: _Optional[int] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("results", "model", "metadata", "usage")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RankResult]
    model: str
    metadata: RankMetadata
    usage: Usage
    def __init__(self, results: _Optional[_Iterable[_Union[RankResult, _Mapping]]] = ..., model: _Optional[str] = ..., metadata: _Optional[_Union[RankMetadata, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens",)
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    def __init__(self, input_tokens: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "kind", "max_length", "is_default", "architecture", "precision", "family", "scoring", "takes_instruction", "runtime", "modalities", "state")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    SCORING_FIELD_NUMBER: _ClassVar[int]
    TAKES_INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: ModelKind
    max_length: int
    is_default: bool
    architecture: str
    precision: str
    family: str
    scoring: str
    takes_instruction: bool
    runtime: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    state: ModelState
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., max_length: _Optional[int] = ..., is_default: bool = ..., architecture: _Optional[str] = ..., precision: _Optional[str] = ..., family: _Optional[str] = ..., scoring: _Optional[str] = ..., takes_instruction: bool = ..., runtime: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., state: _Optional[_Union[ModelState, str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
