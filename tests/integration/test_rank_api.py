"""The public API end to end: client -> rank service -> Triton ensemble -> client."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reranker_client import (
    AsyncRerankClient,
    DeadlineExceededError,
    InvalidArgumentError,
    RerankClient,
)

from reranker.builder.builder import DEFAULT_MODEL_NAME
from tests.integration.conftest import (
    ALL_MODELS,
    CROSS_ENCODER,
    CROSS_ENCODER_FROM_ONNX,
    CROSS_ENCODER_TORCH,
    DEBERTA,
    DEFAULT_BF16,
    DEFAULT_INT8,
    DEFAULT_TORCH,
    JINA,
    NATIVE_BF16,
    Server,
)
from tests.texts import MOCKINGBIRD_DOCUMENTS, MOCKINGBIRD_QUERY


@pytest.fixture
def client(server: Server) -> Iterator[RerankClient]:
    with RerankClient(server.address, timeout=60) as client:
        yield client


def test_mockingbird_ranks_the_harper_lee_documents_first(client: RerankClient) -> None:
    results = client.rank(MOCKINGBIRD_QUERY, MOCKINGBIRD_DOCUMENTS, top_k=3, return_documents=True)
    assert len(results) == 3
    assert all(set(r) == {"corpus_id", "score", "text"} for r in results)
    assert {results[0]["corpus_id"], results[1]["corpus_id"]} == {0, 2}
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    for r in results:
        assert r["text"] == MOCKINGBIRD_DOCUMENTS[r["corpus_id"]]
        assert isinstance(r["corpus_id"], int) and isinstance(r["score"], float)


def test_without_top_k_every_document_comes_back_once_without_text(client: RerankClient) -> None:
    results = client.rank(MOCKINGBIRD_QUERY, MOCKINGBIRD_DOCUMENTS, model=CROSS_ENCODER)
    assert sorted(r["corpus_id"] for r in results) == list(range(len(MOCKINGBIRD_DOCUMENTS)))
    assert all(set(r) == {"corpus_id", "score"} for r in results)
    assert all(0.0 < r["score"] < 1.0 for r in results)


def test_raw_scores_are_the_logits_behind_the_sigmoid(client: RerankClient) -> None:
    scores = {
        r["corpus_id"]: r["score"]
        for r in client.rank("q", MOCKINGBIRD_DOCUMENTS, model=CROSS_ENCODER)
    }
    raw = client.rank("q", MOCKINGBIRD_DOCUMENTS, model=CROSS_ENCODER, raw_scores=True)
    for r in raw:
        assert math.isclose(1 / (1 + math.exp(-r["score"])), scores[r["corpus_id"]], abs_tol=1e-9)


def test_duplicate_documents_are_each_scored(client: RerankClient) -> None:
    documents = ["same text", "other text", "same text"]
    results = client.rank("same text", documents, model=CROSS_ENCODER)
    by_id = {r["corpus_id"]: r["score"] for r in results}
    assert len(results) == 3
    assert by_id[0] == pytest.approx(by_id[2], abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"documents": []}, "documents"),
        ({"documents": ["fine", ""]}, "documents[1]"),
        ({"model": "no-such-model"}, "model"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": -5}, "top_k"),
        ({"instruction": "Judge relevance"}, "instruction"),
        ({"priority": 10}, "priority"),
    ],
)
def test_bad_input_is_invalid_argument_and_the_server_keeps_serving(
    client: RerankClient, kwargs: dict[str, Any], field: str
) -> None:
    call: dict[str, Any] = {"query": "q", "documents": ["a document"], **kwargs}
    with pytest.raises(InvalidArgumentError) as raised:
        client.rank(**call)
    assert raised.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details.startswith(field)
    assert client.rank("q", ["a document"])[0]["corpus_id"] == 0


def test_a_deadline_shorter_than_inference_is_deadline_exceeded(client: RerankClient) -> None:
    documents = [f"document number {i} " * 50 for i in range(200)]
    with pytest.raises(DeadlineExceededError):
        client.rank("q", documents, model=CROSS_ENCODER, timeout=0.005)
    assert len(client.rank("q", ["still serving"])) == 1


def test_list_models(client: RerankClient) -> None:
    models = {m.name: m for m in client.models()}
    assert set(models) == set(ALL_MODELS)
    expected = {
        DEFAULT_MODEL_NAME: ("bi-encoder", "BertModel", 256, "fp32", True),
        DEFAULT_INT8: ("bi-encoder", "BertModel", 256, "int8", False),
        CROSS_ENCODER: ("cross-encoder", "BertForSequenceClassification", 512, "fp32", False),
        CROSS_ENCODER_FROM_ONNX: (
            "cross-encoder",
            "BertForSequenceClassification",
            512,
            "fp32",
            False,
        ),
        DEBERTA: ("cross-encoder", "DebertaV2ForSequenceClassification", 512, "fp32", False),
        JINA: ("cross-encoder", "JinaBertForSequenceClassification", 8192, "fp32", False),
    }
    if NATIVE_BF16:
        expected[DEFAULT_BF16] = ("bi-encoder", "BertModel", 256, "bf16", False)
    for name, (kind, architecture, max_length, precision, is_default) in expected.items():
        m = models[name]
        assert (m.kind, m.architecture, m.max_length, m.precision, m.is_default) == (
            kind,
            architecture,
            max_length,
            precision,
            is_default,
        ), name
    # Family (the checkpoints' model_type), scoring and runtime, as each was built.
    described = {
        name: (m.family, m.scoring, m.runtime, m.takes_instruction) for name, m in models.items()
    }
    assert described[DEFAULT_MODEL_NAME] == ("bert", "cosine", "onnx", False)
    assert described[DEFAULT_TORCH] == ("bert", "cosine", "torch", False)
    assert described[CROSS_ENCODER] == ("bert", "sigmoid", "onnx", False)
    assert described[CROSS_ENCODER_TORCH] == ("bert", "sigmoid", "torch", False)
    assert described[DEBERTA] == ("deberta-v2", "sigmoid", "onnx", False)
    assert described[JINA] == ("bert", "sigmoid", "onnx", False)


def test_health_and_reflection(server: Server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "reranker.v1.Rank"):
            response = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request])))
        names = {s.name for s in response.list_services_response.service}
        assert {"reranker.v1.Rank", "grpc.health.v1.Health"} <= names


async def test_async_client_matches_the_blocking_one(server: Server, client: RerankClient) -> None:
    expected = client.rank(MOCKINGBIRD_QUERY, MOCKINGBIRD_DOCUMENTS, top_k=4)
    async with AsyncRerankClient(server.address, timeout=60) as async_client:
        results = await asyncio.gather(
            *(
                async_client.rank(MOCKINGBIRD_QUERY, MOCKINGBIRD_DOCUMENTS, top_k=4)
                for _ in range(4)
            )
        )
        models = await async_client.models()
    for result in results:
        assert [r["corpus_id"] for r in result] == [r["corpus_id"] for r in expected]
        for got, want in zip(result, expected, strict=True):
            assert got["score"] == pytest.approx(want["score"], abs=1e-6)
    assert len(models) == len(ALL_MODELS)
