"""Translation between the public Python API and the protobuf messages."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reranker_api.reranker.v1 import reranker_pb2 as pb

SERVICE_NAME = "reranker.v1.Rank"

# Retries on UNAVAILABLE are left to gRPC itself (transparent retries + this policy), so a
# restarting server is ridden over without a hand-written loop. CANCELLED is retried too:
# gRPC core answers the calls a stopping server has accepted but not yet handed to a handler
# with CANCELLED, not UNAVAILABLE (grpc/grpc#41785). Every method of the service only reads,
# so a retry is safe, and a call the caller cancels itself is never retried. Several server
# addresses (``ipv4:10.0.0.1:50051,10.0.0.2:50051`` or a DNS name with many addresses) are
# spread over by gRPC's round robin.
_SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": SERVICE_NAME}],
            "retryPolicy": {
                "maxAttempts": 4,
                "initialBackoff": "0.1s",
                "maxBackoff": "1s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
            },
        }
    ],
}

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Channel options every client uses: retry policy and message size limits."""
    return [
        ("grpc.service_config", json.dumps(_SERVICE_CONFIG)),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        *extra,
    ]


def call_metadata(
    metadata: Sequence[tuple[str, str]], api_key: str | None
) -> tuple[tuple[str, str], ...]:
    """Metadata sent with every call: the caller's, plus the API key as a bearer token."""
    if api_key:
        return (*metadata, ("authorization", f"Bearer {api_key}"))
    return tuple(metadata)


@dataclass(frozen=True)
class ModelInfo:
    """A model the server serves.

    Attributes:
        name: Name to pass as ``model=``.
        kind: ``"cross-encoder"``, ``"bi-encoder"``, ``"causal-lm"`` or ``"late-interaction"``.
        max_length: Longest input, in tokens, the model reads.
        is_default: Whether it is used when no model is named.
        architecture: The checkpoint's architecture name.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``.
        family: The checkpoint's model family (``"bert"``, ``"xlm-roberta"``, ...).
        scoring: ``"sigmoid"``, ``"logit"``, ``"cosine"`` or ``"logit-diff"``.
        takes_instruction: Whether a per-request instruction is accepted.
        runtime: ``"onnx"`` or ``"torch"``.
        modalities: What a query or document may be: ``("text",)``, or
            ``("text", "image")`` for a vision-language reranker.
        state: ``"loaded"``, ``"loading"``, ``"unloaded"`` (a call loads it) or ``"failed"``
            (its last load failed). A model the server cannot describe while it is not loaded
            has only its name and state set.
    """

    name: str
    kind: str
    max_length: int
    is_default: bool
    architecture: str
    precision: str
    family: str = ""
    scoring: str = ""
    takes_instruction: bool = False
    runtime: str = ""
    modalities: tuple[str, ...] = ("text",)
    state: str = "loaded"


_KIND_NAMES = {
    pb.MODEL_KIND_CROSS_ENCODER: "cross-encoder",
    pb.MODEL_KIND_BI_ENCODER: "bi-encoder",
    pb.MODEL_KIND_CAUSAL_LM: "causal-lm",
    pb.MODEL_KIND_LATE_INTERACTION: "late-interaction",
}


_TRUNCATIONS = {
    "longest_first": pb.TRUNCATION_LONGEST_FIRST,
    "refuse": pb.TRUNCATION_REFUSE,
}


@dataclass(frozen=True)
class RankOptions:
    """Options of a rank call beyond query and documents; see ``RerankClient.rank``."""

    top_k: int | None = None
    return_documents: bool = False
    model: str = ""
    raw_scores: bool = False
    truncation: str = "longest_first"
    max_document_tokens: int | None = None
    chunking: bool = False
    chunk_overlap_tokens: int | None = None
    max_chunks: int | None = None
    instruction: str | None = None
    priority: int | None = None


# A query or document: text; an image (its encoded bytes, or an object with a ``save``
# method such as a PIL image, sent as PNG); or ``{"image": ..., "text": ...}``, read image first.
Content = str | bytes | Mapping[str, Any] | Any


def _image(value: Any) -> pb.Image:
    if isinstance(value, bytes):
        return pb.Image(data=value)
    if hasattr(value, "save"):
        buffer = io.BytesIO()
        _as_processors_see_it(value).save(buffer, format="PNG")
        return pb.Image(data=buffer.getvalue(), media_type="image/png")
    raise TypeError(f"an image is its encoded bytes or a PIL image, not {type(value).__name__}")


def _as_processors_see_it(image: Any) -> Any:
    """A PIL image as a vision-language processor reads the object itself: transparency
    composited onto white, then RGB (the server reads the encoded file as a path or data URL
    is read, whose transparency is dropped)."""
    if "A" not in image.getbands() and image.info.get("transparency") is None:
        return image
    from PIL import Image  # the caller holds a PIL image: Pillow is there

    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _content(value: Content) -> tuple[str, pb.Image | None]:
    if isinstance(value, str):
        return value, None
    if isinstance(value, Mapping):
        image = value.get("image")
        return str(value.get("text", "")), None if image is None else _image(image)
    return "", _image(value)


def build_rank_request(
    query: Content, documents: Sequence[Content], options: RankOptions
) -> pb.RankRequest:
    if isinstance(documents, str):
        raise TypeError("documents must be a sequence of strings, not a single string")
    if options.truncation not in _TRUNCATIONS:
        raise ValueError(f"truncation must be one of {sorted(_TRUNCATIONS)}")
    query_text, query_image = _content(query)
    sides = [_content(document) for document in documents]
    images = [image for _, image in sides]
    return pb.RankRequest(
        query=query_text,
        query_image=query_image,
        document_images=[image or pb.Image() for image in images] if any(images) else [],
        documents=[text for text, _ in sides],
        model=options.model,
        top_k=options.top_k,
        return_documents=options.return_documents,
        raw_scores=options.raw_scores,
        truncation=_TRUNCATIONS[options.truncation],
        max_document_tokens=options.max_document_tokens or 0,
        chunking=pb.Chunking(
            enabled=options.chunking,
            overlap_tokens=options.chunk_overlap_tokens,
            max_chunks=options.max_chunks or 0,
        )
        if options.chunking
        else None,
        instruction=options.instruction,
        priority=options.priority,
    )


def rank_results(
    response: pb.RankResponse, documents: Sequence[Content] = ()
) -> list[dict[str, Any]]:
    """Results in the shape of sentence-transformers' ``CrossEncoder.rank()``: a returned
    document with an image is the caller's own object, as ``CrossEncoder.rank()`` returns it."""
    results: list[dict[str, Any]] = []
    for result in response.results:
        entry: dict[str, Any] = {"corpus_id": result.index, "score": result.score}
        if result.HasField("image") and result.index < len(documents):
            entry["text"] = documents[result.index]
        elif result.HasField("text"):
            entry["text"] = result.text
        results.append(entry)
    return results


def model_infos(response: pb.ListModelsResponse) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=m.name,
            kind=_KIND_NAMES.get(m.kind, "unspecified"),
            max_length=m.max_length,
            is_default=m.is_default,
            architecture=m.architecture,
            precision=m.precision,
            family=m.family,
            scoring=m.scoring,
            takes_instruction=m.takes_instruction,
            runtime=m.runtime,
            modalities=tuple(m.modalities) or ("text",),
            state=pb.ModelState.Name(m.state).removeprefix("MODEL_STATE_").lower(),
        )
        for m in response.models
    ]
