"""Translation between the public Python API and the protobuf messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reranker_api.reranker.v1 import reranker_pb2 as pb

SERVICE_NAME = "reranker.v1.Rank"

# Retries on UNAVAILABLE are left to gRPC itself (transparent retries + this policy), so a
# restarting server is ridden over without a hand-written loop. Several server addresses
# (``ipv4:10.0.0.1:50051,10.0.0.2:50051`` or a DNS name with many addresses) are spread
# over by gRPC's round robin.
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
                "retryableStatusCodes": ["UNAVAILABLE"],
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
        kind: ``"cross-encoder"``, ``"bi-encoder"`` or ``"causal-lm"``.
        max_length: Longest input, in tokens, the model reads.
        is_default: Whether it is used when no model is named.
        architecture: The checkpoint's architecture name.
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` or ``"int8"``.
        family: The checkpoint's model family (``"bert"``, ``"xlm-roberta"``, ...).
        scoring: ``"sigmoid"``, ``"logit"``, ``"cosine"`` or ``"logit-diff"``.
        takes_instruction: Whether a per-request instruction is accepted.
        runtime: ``"onnx"`` or ``"torch"``.
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


_KIND_NAMES = {
    pb.MODEL_KIND_CROSS_ENCODER: "cross-encoder",
    pb.MODEL_KIND_BI_ENCODER: "bi-encoder",
    pb.MODEL_KIND_CAUSAL_LM: "causal-lm",
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


def build_rank_request(
    query: str, documents: Sequence[str], options: RankOptions
) -> pb.RankRequest:
    if isinstance(documents, str):
        raise TypeError("documents must be a sequence of strings, not a single string")
    if options.truncation not in _TRUNCATIONS:
        raise ValueError(f"truncation must be one of {sorted(_TRUNCATIONS)}")
    return pb.RankRequest(
        query=query,
        documents=list(documents),
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
    )


def rank_results(response: pb.RankResponse) -> list[dict[str, Any]]:
    """Results in the shape of sentence-transformers' ``CrossEncoder.rank()``."""
    results: list[dict[str, Any]] = []
    for result in response.results:
        entry: dict[str, Any] = {"corpus_id": result.index, "score": result.score}
        if result.HasField("text"):
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
        )
        for m in response.models
    ]
