"""Per-request truncation control and chunked scoring of long documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc
from reranker_client import InvalidArgumentError, RerankClient
from sentence_transformers import CrossEncoder
from transformers import AutoTokenizer

from reranker.builder.builder import DEFAULT_MODEL_NAME
from tests.integration.conftest import CROSS_ENCODER, Server
from tests.integration.test_models import long_document
from tests.texts import MOCKINGBIRD_DOCUMENTS, MOCKINGBIRD_QUERY
from tests.windows import reference_windows

QUERY = "how are exceptions raised and handled"


@pytest.fixture(scope="module")
def tokenizer(checkpoint: Path) -> Any:
    return AutoTokenizer.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def cross_encoder(checkpoint: Path) -> CrossEncoder:
    return CrossEncoder(str(checkpoint), device="cpu")


@pytest.fixture
def client(server: Server) -> Iterator[RerankClient]:
    with RerankClient(server.address, timeout=120) as client:
        yield client


def _scores(results: list[dict[str, Any]]) -> dict[int, float]:
    return {int(r["corpus_id"]): float(r["score"]) for r in results}


def test_document_cap_reads_only_the_first_tokens(
    client: RerankClient,
    tokenizer: Any,
    cross_encoder: CrossEncoder,
) -> None:
    documents = [long_document(tokenizer, 600), MOCKINGBIRD_DOCUMENTS[0]]
    served = _scores(client.rank(QUERY, documents, model=CROSS_ENCODER, max_document_tokens=40))
    capped = []
    for document in documents:
        offsets = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
        capped.append(document[: offsets["offset_mapping"][:40][-1][1]])
    reference = cross_encoder.predict([(QUERY, d) for d in capped])
    assert max(abs(served[i] - reference[i]) for i in range(2)) <= 1e-5
    uncapped = _scores(client.rank(QUERY, documents, model=CROSS_ENCODER))
    assert abs(uncapped[0] - served[0]) > 1e-4  # the cap changed what was read


def test_refuse_names_the_document_and_its_token_count(
    client: RerankClient,
    tokenizer: Any,
) -> None:
    long = long_document(tokenizer, 700)
    documents = [*MOCKINGBIRD_DOCUMENTS[:2], long]
    tokens = len(tokenizer(QUERY, long)["input_ids"])
    with pytest.raises(InvalidArgumentError) as raised:
        client.rank(QUERY, documents, model=CROSS_ENCODER, truncation="refuse")
    assert raised.value.details.startswith(f"documents[2] has {tokens} tokens")
    assert "at most 512" in raised.value.details
    fitting = client.rank(QUERY, documents[:2], model=CROSS_ENCODER, truncation="refuse")
    default = client.rank(QUERY, documents[:2], model=CROSS_ENCODER)
    assert _scores(fitting) == pytest.approx(_scores(default), abs=1e-7)


def test_chunked_scores_are_the_best_window_of_each_document(
    client: RerankClient,
    tokenizer: Any,
    cross_encoder: CrossEncoder,
) -> None:
    documents = [MOCKINGBIRD_DOCUMENTS[1], long_document(tokenizer, 1500), "short one"]
    served = client.rank(
        QUERY, documents, model=CROSS_ENCODER, chunking=True, chunk_overlap_tokens=32
    )
    assert sorted(r["corpus_id"] for r in served) == [0, 1, 2]
    window = 512 - 3 - len(tokenizer(QUERY, add_special_tokens=False)["input_ids"])
    reference = []
    for document in documents:
        encoding = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"]
        spans = reference_windows(encoding.word_ids(), window, 32, 16)
        texts = [document[offsets[a][0] : offsets[b - 1][1]] for a, b in spans]
        assert len(texts) == (4 if len(offsets) > window else 1)
        reference.append(float(np.max(cross_encoder.predict([(QUERY, t) for t in texts]))))
    got = _scores(served)
    assert max(abs(got[i] - reference[i]) for i in range(3)) <= 1e-5
    first_only = client.rank(QUERY, documents, model=CROSS_ENCODER, chunking=True, max_chunks=1)
    truncated = client.rank(QUERY, documents, model=CROSS_ENCODER)
    assert _scores(first_only)[1] == pytest.approx(_scores(truncated)[1], abs=1e-3)


def test_chunking_finds_the_answer_at_the_end_of_a_long_document(
    client: RerankClient,
    tokenizer: Any,
) -> None:
    buried = long_document(tokenizer, 2000) + " " + MOCKINGBIRD_DOCUMENTS[2]
    documents = [buried, *MOCKINGBIRD_DOCUMENTS[3:]]
    plain = client.rank(MOCKINGBIRD_QUERY, documents, model=DEFAULT_MODEL_NAME)
    chunked = client.rank(MOCKINGBIRD_QUERY, documents, model=DEFAULT_MODEL_NAME, chunking=True)
    assert plain[0]["corpus_id"] != 0  # truncated to 256 tokens, the answer is never read
    assert chunked[0]["corpus_id"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chunking": True, "truncation": "refuse"}, "exclude each other"),
        ({"chunking": True, "max_chunks": 1000}, "chunking.max_chunks"),
        ({"chunking": True, "chunk_overlap_tokens": 600}, "chunking.overlap_tokens"),
    ],
)
def test_bad_truncation_options_are_invalid_argument(
    client: RerankClient, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        client.rank(QUERY, ["a document"], model=CROSS_ENCODER, **options)
    assert len(client.rank(QUERY, ["a document"], model=CROSS_ENCODER)) == 1


def test_an_unknown_truncation_value_is_invalid_argument(server: Server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.RankStub(channel)
        request = pb.RankRequest(query="q", documents=["d"], truncation=7)  # type: ignore[arg-type]
        with pytest.raises(grpc.RpcError) as raised:
            stub.Rank(request, timeout=30)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "truncation" in (raised.value.details() or "")
