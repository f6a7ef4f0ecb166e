from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
import pytest
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as rpc
from reranker_client import (
    InvalidArgumentError,
    RerankClient,
    RerankError,
    UnavailableError,
)
from reranker_client._convert import RankOptions, build_rank_request, rank_results
from reranker_client.errors import from_rpc_error


def test_request_carries_every_option() -> None:
    options = RankOptions(
        top_k=1,
        return_documents=True,
        model="m",
        raw_scores=True,
        truncation="refuse",
        max_document_tokens=100,
        chunking=True,
        chunk_overlap_tokens=0,
        max_chunks=3,
    )
    request = build_rank_request("q", ("a", "b"), options)
    assert request.documents == ["a", "b"]
    assert request.top_k == 1 and request.HasField("top_k")
    assert request.return_documents and request.raw_scores and request.model == "m"
    assert request.truncation == pb.TRUNCATION_REFUSE
    assert request.max_document_tokens == 100
    assert request.chunking.enabled and request.chunking.max_chunks == 3
    assert request.chunking.HasField("overlap_tokens") and request.chunking.overlap_tokens == 0
    unset = build_rank_request("q", ["a"], RankOptions())
    assert not unset.HasField("top_k")
    assert not unset.HasField("chunking")
    assert unset.truncation == pb.TRUNCATION_LONGEST_FIRST
    with pytest.raises(ValueError):
        build_rank_request("q", ["a"], RankOptions(truncation="middle"))


def test_a_single_string_is_not_taken_for_a_list_of_documents() -> None:
    with pytest.raises(TypeError, match="not a single string"):
        build_rank_request("q", "abc", RankOptions())


def test_results_have_the_cross_encoder_rank_shape() -> None:
    response = pb.RankResponse(
        results=[pb.RankResult(index=2, score=0.5, text="c"), pb.RankResult(index=0, score=0.25)]
    )
    assert rank_results(response) == [
        {"corpus_id": 2, "score": 0.5, "text": "c"},
        {"corpus_id": 0, "score": 0.25},
    ]


class _Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_errors_map_to_the_exception_tree() -> None:
    error = from_rpc_error(_Failure(grpc.StatusCode.INVALID_ARGUMENT, "query must not be empty"))
    assert isinstance(error, InvalidArgumentError)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "query must not be empty"
    assert isinstance(from_rpc_error(_Failure(grpc.StatusCode.UNAVAILABLE, "x")), UnavailableError)
    other = from_rpc_error(_Failure(grpc.StatusCode.ABORTED, "x"))
    assert type(other) is RerankError


def test_images_travel_by_document_and_come_back_as_the_callers_objects() -> None:
    import io

    from PIL import Image

    picture = Image.new("RGB", (4, 3), "blue")
    page = b"\x89PNG fake bytes"
    documents = [page, "a text", {"image": picture, "text": "its caption"}]
    request = build_rank_request({"image": page}, documents, RankOptions(return_documents=True))
    assert request.query == "" and request.query_image.data == page
    assert list(request.documents) == ["", "a text", "its caption"]
    assert [image.data for image in request.document_images][:2] == [page, b""]
    sent = request.document_images[2]
    assert sent.media_type == "image/png"
    assert Image.open(io.BytesIO(sent.data)).size == (4, 3)
    # Text alone sends no images at all.
    assert not build_rank_request("q", ["a"], RankOptions()).document_images
    response = pb.RankResponse(
        results=[
            pb.RankResult(index=2, score=0.9, text="its caption", image=sent),
            pb.RankResult(index=1, score=0.5, text="a text"),
        ]
    )
    assert rank_results(response, documents) == [
        {"corpus_id": 2, "score": 0.9, "text": documents[2]},
        {"corpus_id": 1, "score": 0.5, "text": "a text"},
    ]


def test_a_transparent_picture_is_sent_as_the_processor_reads_the_object() -> None:
    import io

    from PIL import Image
    from transformers.image_transforms import convert_to_rgb

    picture = Image.new("RGBA", (6, 4), (200, 10, 10, 0))
    picture.putpixel((0, 0), (10, 200, 10, 128))
    request = build_rank_request("q", [picture], RankOptions())
    sent = Image.open(io.BytesIO(request.document_images[0].data))
    # What transformers' processors make of the object: composited onto white.
    expected = convert_to_rgb(picture, return_numpy=True)
    assert sent.mode == "RGB"
    assert (np.asarray(sent) == expected).all()


class _CancelsOnce(rpc.RankServicer):
    """A Rank server that answers its first call as gRPC core answers a call still pending
    when a server stops (CANCELLED), and every later one."""

    def __init__(self) -> None:
        self.calls = 0

    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:
        self.calls += 1
        if self.calls == 1:
            context.abort(grpc.StatusCode.CANCELLED, "CANCELLED")
        return pb.RankResponse(results=[pb.RankResult(index=0, score=0.5)])


def test_a_call_a_stopping_server_cancelled_is_retried() -> None:
    servicer = _CancelsOnce()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rpc.add_RankServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with RerankClient(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.rank("q", ["a"]) == [{"corpus_id": 0, "score": 0.5}]
    finally:
        server.stop(None)
    assert servicer.calls == 2
