"""Property-based tests over the public API: whatever a caller sends, the server answers
with a well-formed ranking or a documented error, and keeps serving."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.builder.builder import DEFAULT_MODEL_NAME
from tests.integration.conftest import CROSS_ENCODER, DEFAULT_INT8, Server

pytestmark = pytest.mark.generated

# What a caller may be told besides a result; anything else (INTERNAL, UNKNOWN) is a bug.
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)

# Any Unicode a protobuf string can carry (no lone surrogates), control characters included.
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=300)
control_text = st.text(st.characters(max_codepoint=0x1F), max_size=50)
huge_text = st.builds(
    lambda unit, count: unit * count,
    st.sampled_from(["x", "é", "字 ", "\U0001f600"]),
    st.integers(1, 400_000),
)
texts = st.one_of(any_text, control_text, huge_text, st.just(""), st.just(" \t\n"))

# Text with something to rank in it, whatever else it holds.
words = st.builds(
    lambda head, rest: head + rest, st.sampled_from(["river ", "é", "字", "\x00a"]), texts
)
chunking = st.builds(
    pb.Chunking,
    enabled=st.booleans(),
    overlap_tokens=st.none() | UINT32 | st.integers(0, 64),
    max_chunks=st.just(0) | UINT32 | st.integers(1, 16),
)

# Anything at all, mostly refused.
wild_requests = st.builds(
    pb.RankRequest,
    query=texts,
    documents=st.lists(texts, max_size=40),
    model=st.sampled_from(["", DEFAULT_MODEL_NAME, "no-such-model"]) | any_text,
    top_k=st.none() | INT32,
    return_documents=st.booleans(),
    raw_scores=st.booleans(),
    truncation=st.integers(-3, 5),
    max_document_tokens=st.just(0) | UINT32,
    chunking=st.none() | chunking,
)
# Well-formed calls with odd contents, mostly ranked.
plausible_requests = st.builds(
    pb.RankRequest,
    query=words,
    documents=st.lists(words, min_size=1, max_size=24),
    model=st.sampled_from(["", DEFAULT_MODEL_NAME, DEFAULT_INT8, CROSS_ENCODER]),
    top_k=st.none() | st.integers(1, 30),
    return_documents=st.booleans(),
    raw_scores=st.booleans(),
    truncation=st.integers(0, 2),
    max_document_tokens=st.just(0) | st.integers(1, 600),
    chunking=st.none() | chunking,
)


@pytest.fixture(scope="module")
def rank_stub(server: Server) -> Iterator[pb_grpc.RankStub]:
    with grpc.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 256 * 1024 * 1024)]
    ) as channel:
        yield pb_grpc.RankStub(channel)


def _check_ranking(request: pb.RankRequest, response: pb.RankResponse) -> None:
    n = len(request.documents)
    expected = n if not request.HasField("top_k") else min(request.top_k, n)
    assert len(response.results) == expected
    indices = [r.index for r in response.results]
    assert len(set(indices)) == len(indices) and all(0 <= i < n for i in indices)
    scores = [r.score for r in response.results]
    assert all(math.isfinite(s) for s in scores)
    assert scores == sorted(scores, reverse=True)
    for result in response.results:
        if request.return_documents:
            assert result.text == request.documents[result.index]
        else:
            assert not result.HasField("text")


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=st.one_of(plausible_requests, wild_requests))
def test_any_request_gets_a_ranking_or_a_documented_error(
    rank_stub: pb_grpc.RankStub, request: pb.RankRequest
) -> None:
    try:
        response = rank_stub.Rank(request, timeout=120)
    except grpc.RpcError as error:
        assert error.code() in DOCUMENTED, f"{error.code()}: {error.details()}"
        assert error.details()
        event(error.code().name)
        return
    event("ranked")
    _check_ranking(request, response)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(payload=st.binary(max_size=3000))
def test_any_bytes_get_a_ranking_or_a_documented_error(server: Server, payload: bytes) -> None:
    with grpc.insecure_channel(server.address) as channel:
        rank = channel.unary_unary("/reranker.v1.Rank/Rank")
        try:
            pb.RankResponse.FromString(rank(payload, timeout=120))
        except grpc.RpcError as error:
            assert error.code() in DOCUMENTED, f"{error.code()}: {error.details()}"
            event(error.code().name)
            return
    event("ranked")


def test_the_server_still_serves_after_a_burst_of_garbage(server: Server) -> None:
    rng = random.Random(11)
    with grpc.insecure_channel(server.address) as channel:
        rank = channel.unary_unary("/reranker.v1.Rank/Rank")
        for _ in range(50):
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
            try:
                rank(payload, timeout=120)
            except grpc.RpcError as error:
                assert error.code() in DOCUMENTED, f"{error.code()}: {error.details()}"
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
        response = pb_grpc.RankStub(channel).Rank(
            pb.RankRequest(query="q", documents=["a", "b"]), timeout=60
        )
        assert len(response.results) == 2
