"""The HTTP shapes (Cohere v1/v2, Jina, TEI, NIM) and TEI's gRPC API, end to end through the
real server and Triton, called by the real client libraries of the tools that speak them.
Every score is checked against ``reranker.v1`` on the same input."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import cohere
import grpc
import httpx
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc
from reranker_api.tei.v1 import tei_pb2, tei_pb2_grpc
from reranker_client import RerankClient

from reranker.builder.builder import DEFAULT_MODEL_NAME
from tests.http_errors import error_message
from tests.integration.conftest import ALL_MODELS, CROSS_ENCODER, Server, rank_server
from tests.texts import MOCKINGBIRD_DOCUMENTS, MOCKINGBIRD_QUERY

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

QUERY, DOCUMENTS = MOCKINGBIRD_QUERY, MOCKINGBIRD_DOCUMENTS


@pytest.fixture(scope="module")
def grpc_client(server: Server) -> Iterator[RerankClient]:
    with RerankClient(server.address, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=60) as client:
        yield client


def reference(
    client: RerankClient, model: str = CROSS_ENCODER, **options: Any
) -> list[dict[str, Any]]:
    return client.rank(QUERY, DOCUMENTS, model=model, **options)


def assert_same_ranking(
    got: list[tuple[int, float]], expected: list[dict[str, Any]], tolerance: float = 1e-6
) -> None:
    assert [i for i, _ in got] == [r["corpus_id"] for r in expected]
    for (_, score), reference_result in zip(got, expected, strict=True):
        assert abs(score - reference_result["score"]) <= tolerance


def test_cohere_v2_sdk_ranks_as_the_grpc_api_does(
    server: Server, grpc_client: RerankClient
) -> None:
    client = cohere.ClientV2(base_url=server.http_url, api_key="unused")
    response = client.rerank(model=CROSS_ENCODER, query=QUERY, documents=DOCUMENTS, top_n=4)
    expected = reference(grpc_client, top_k=4)
    assert_same_ranking([(r.index, r.relevance_score) for r in response.results], expected)
    # max_tokens_per_doc is the gRPC max_document_tokens.
    short = client.rerank(
        model=CROSS_ENCODER, query=QUERY, documents=DOCUMENTS, max_tokens_per_doc=5
    )
    expected = reference(grpc_client, max_document_tokens=5)
    assert_same_ranking([(r.index, r.relevance_score) for r in short.results], expected)


def test_cohere_v1_sdk_returns_the_documents(server: Server, grpc_client: RerankClient) -> None:
    client = cohere.Client(base_url=server.http_url, api_key="unused")
    response = client.rerank(
        model=CROSS_ENCODER, query=QUERY, documents=DOCUMENTS, top_n=3, return_documents=True
    )
    expected = reference(grpc_client, top_k=3, return_documents=True)
    assert_same_ranking([(r.index, r.relevance_score) for r in response.results], expected)
    assert [r.document.text for r in response.results if r.document] == [
        e["text"] for e in expected
    ]


def test_langchain_cohere_rerank_compresses_documents(
    server: Server, grpc_client: RerankClient
) -> None:
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document
    from pydantic import SecretStr

    reranker = CohereRerank(
        base_url=server.http_url, cohere_api_key=SecretStr("unused"), model=CROSS_ENCODER, top_n=3
    )
    kept = reranker.compress_documents([Document(page_content=d) for d in DOCUMENTS], QUERY)
    expected = reference(grpc_client, top_k=3)
    assert [d.page_content for d in kept] == [DOCUMENTS[r["corpus_id"]] for r in expected]
    for document, result in zip(kept, expected, strict=True):
        assert abs(document.metadata["relevance_score"] - result["score"]) <= 1e-6


def test_llama_index_tei_postprocessor_reorders_nodes(
    server: Server, grpc_client: RerankClient
) -> None:
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    nodes = [NodeWithScore(node=TextNode(text=text), score=0.0) for text in DOCUMENTS]
    reranker = TextEmbeddingInference(base_url=server.http_url, top_n=3)
    reordered = reranker.postprocess_nodes(nodes, query_str=QUERY)
    expected = reference(grpc_client, model=DEFAULT_MODEL_NAME, top_k=3)
    assert [n.node.get_content() for n in reordered] == [
        DOCUMENTS[r["corpus_id"]] for r in expected
    ]
    for node, result in zip(reordered, expected, strict=True):
        assert abs((node.score or 0.0) - result["score"]) <= 1e-6


def test_haystack_tei_ranker_ranks_documents(server: Server, grpc_client: RerankClient) -> None:
    from haystack import Document
    from haystack.components.rankers import HuggingFaceTEIRanker
    from haystack.utils import Secret

    ranker = HuggingFaceTEIRanker(url=server.http_url, top_k=4, token=Secret.from_token("unused"))
    ranked = ranker.run(query=QUERY, documents=[Document(content=d) for d in DOCUMENTS])
    expected = reference(grpc_client, model=DEFAULT_MODEL_NAME, top_k=4)
    assert [d.content for d in ranked["documents"]] == [DOCUMENTS[r["corpus_id"]] for r in expected]
    for document, result in zip(ranked["documents"], expected, strict=True):
        assert abs(document.score - result["score"]) <= 1e-6


def test_jina_shape_takes_strings_and_objects(
    http: httpx.Client, grpc_client: RerankClient
) -> None:
    documents: list[Any] = [
        text if i % 2 else {"text": text, "source": f"doc-{i}"} for i, text in enumerate(DOCUMENTS)
    ]
    response = http.post(
        "/v1/rerank",
        json={
            "model": CROSS_ENCODER,
            "query": QUERY,
            "documents": documents,
            "top_n": 5,
            "return_documents": True,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reference(grpc_client, top_k=5)
    assert_same_ranking([(r["index"], r["relevance_score"]) for r in body["results"]], expected)
    for result in body["results"]:
        sent = documents[result["index"]]
        assert result["document"] == (sent if isinstance(sent, dict) else {"text": sent})
    assert body["model"] == CROSS_ENCODER


def test_nim_shape_returns_logits(http: httpx.Client, grpc_client: RerankClient) -> None:
    response = http.post(
        "/v1/ranking",
        json={
            "model": CROSS_ENCODER,
            "query": {"text": QUERY},
            "passages": [{"text": d} for d in DOCUMENTS],
            "truncate": "END",
        },
    )
    assert response.status_code == 200, response.text
    rankings = response.json()["rankings"]
    expected = reference(grpc_client, raw_scores=True)
    assert_same_ranking([(r["index"], r["logit"]) for r in rankings], expected)
    assert any(r["logit"] < 0 or r["logit"] > 1 for r in rankings)  # logits, not sigmoids


def test_tei_rerank_info_and_health(http: httpx.Client, grpc_client: RerankClient) -> None:
    response = http.post(
        "/rerank",
        json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True, "return_text": True},
    )
    assert response.status_code == 200, response.text
    ranks = response.json()
    expected = reference(grpc_client, model=DEFAULT_MODEL_NAME, raw_scores=True)
    assert_same_ranking([(r["index"], r["score"]) for r in ranks], expected)
    assert [r["text"] for r in ranks] == [DOCUMENTS[r["corpus_id"]] for r in expected]
    plain = http.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()
    assert all("text" not in r for r in plain)
    info = http.get("/info").json()
    assert info["model_id"] == DEFAULT_MODEL_NAME
    default = next(m for m in grpc_client.models() if m.name == DEFAULT_MODEL_NAME)
    assert info["max_input_length"] == default.max_length
    assert info["max_client_batch_size"] == 1000  # max_documents_per_call's default
    assert http.get("/health").status_code == 200


def test_voyage_sdk_by_base_url(server: Server, grpc_client: RerankClient) -> None:
    import voyageai

    client = voyageai.Client(api_key="unused", base_url=f"{server.http_url}/voyage/v1")
    response = client.rerank(QUERY, DOCUMENTS, model=CROSS_ENCODER, top_k=3)
    expected = reference(grpc_client, top_k=3)
    assert_same_ranking([(r.index, r.relevance_score) for r in response.results], expected)
    assert [r.document for r in response.results] == [DOCUMENTS[e["corpus_id"]] for e in expected]


def test_mixedbread_sdk_by_base_url(server: Server, grpc_client: RerankClient) -> None:
    from mixedbread import Mixedbread

    client = Mixedbread(api_key="unused", base_url=server.http_url, max_retries=0)
    objects = [{"text": d, "id": i} for i, d in enumerate(DOCUMENTS)]
    response = client.rerank(
        model=CROSS_ENCODER, query=QUERY, input=objects, top_k=3, return_input=True
    )
    expected = reference(grpc_client, top_k=3)
    assert_same_ranking([(r.index, r.score) for r in response.data], expected)
    assert [r.input for r in response.data] == [objects[e["corpus_id"]] for e in expected]


def test_vllm_score_and_llama_cpp_shapes_by_plain_http(
    http: httpx.Client, grpc_client: RerankClient
) -> None:
    expected = reference(grpc_client)
    by_index = {e["corpus_id"]: e["score"] for e in expected}
    bodies: list[dict[str, Any]] = [
        {"model": CROSS_ENCODER, "text_1": QUERY, "text_2": DOCUMENTS},
        {"model": CROSS_ENCODER, "queries": QUERY, "documents": DOCUMENTS},
    ]
    for path in ("/score", "/v1/score"):
        for body in bodies:
            answer = http.post(path, json=body)
            assert answer.status_code == 200, answer.text
            data = answer.json()["data"]
            # vLLM's order: the texts as sent.
            assert [d["index"] for d in data] == list(range(len(DOCUMENTS)))
            assert all(abs(d["score"] - by_index[d["index"]]) <= 1e-6 for d in data)
    for path in ("/rerank", "/reranking", "/v1/reranking", "/v1/rerank"):
        llama = {
            "model": CROSS_ENCODER,
            "query": QUERY,
            "documents": DOCUMENTS,
            "top_n": 3,
        }
        answer = http.post(path, json=llama)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert_same_ranking(
            [(r["index"], r["relevance_score"]) for r in results], reference(grpc_client, top_k=3)
        )


def test_gateway_fields_are_accepted_named_and_counted(
    server: Server, grpc_client: RerankClient
) -> None:
    client = cohere.ClientV2(base_url=server.http_url, api_key="unused")
    response = client.rerank(
        model=CROSS_ENCODER, query=QUERY, documents=DOCUMENTS, top_n=4, priority=5
    )
    assert_same_ranking(
        [(r.index, r.relevance_score) for r in response.results], reference(grpc_client, top_k=4)
    )
    unknown = {"user": "u-1", "metadata": {"a": 1}, "stream": False, "tenant": "t", "x_trace": 3}
    with httpx.Client(base_url=server.http_url, timeout=60) as http:
        body = {"model": CROSS_ENCODER, "query": QUERY, "documents": DOCUMENTS, **unknown}
        answer = http.post("/v2/rerank", json={**body, "priority": 1})
        assert answer.status_code == 200, answer.text
        # Priority is honoured (tests/integration/test_shared_service.py), not ignored.
        assert answer.headers["x-ignored-fields"].split(",") == sorted(unknown)
        results = answer.json()["results"]
        assert_same_ranking(
            [(r["index"], r["relevance_score"]) for r in results], reference(grpc_client)
        )
        # A known field with a bad value is still refused, naming it.
        refused = http.post("/v2/rerank", json={**body, "top_n": "many"})
        assert refused.status_code == 400 and "top_n" in refused.json()["message"]
        refused = http.post("/v2/rerank", json={**body, "priority": 10})
        assert refused.status_code == 400, refused.text
        assert "priority must be 0 (the most urgent) to 9, got 10" in refused.json()["message"]
        metrics = httpx.get(server.metrics_url).text
    counted = [
        line for line in metrics.splitlines() if line.startswith("reranker_ignored_fields_total")
    ]
    assert any('route="/v2/rerank"' in line and float(line.split()[-1]) >= 5 for line in counted)


def test_tei_routes_answer_tei_error_types(server: Server, http: httpx.Client) -> None:
    refused = http.post("/rerank", json={"query": " ", "texts": ["a"]})
    assert refused.status_code == 400
    assert refused.json()["error_type"] == "Validation"


async def test_an_overloaded_tei_route_answers_overloaded(server: Server) -> None:
    import asyncio

    async with rank_server(
        server.triton_grpc,
        default_model=CROSS_ENCODER,
        max_rows_in_flight=8,
        max_documents_per_call=8,
    ) as service:
        base = f"http://127.0.0.1:{service.http_port}"
        body = {"query": QUERY, "texts": [f"{d} {i}" for i in range(8) for d in DOCUMENTS[:1]]}
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            answers = await asyncio.gather(*(client.post("/rerank", json=body) for _ in range(8)))
    statuses = [a.status_code for a in answers]
    assert 200 in statuses and 429 in statuses, statuses
    overloaded = next(a for a in answers if a.status_code == 429)
    assert overloaded.json()["error_type"] == "Overloaded"


def test_models_route_lists_every_served_model(http: httpx.Client) -> None:
    body = http.get("/v1/models").json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == sorted(ALL_MODELS)
    assert [m["id"] for m in body["data"] if m["is_default"]] == [DEFAULT_MODEL_NAME]


def test_models_route_says_what_list_models_says_field_for_field(server: Server) -> None:
    with grpc.insecure_channel(server.address) as channel:
        listed = pb_grpc.RankStub(channel).ListModels(pb.ListModelsRequest(), timeout=30)
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        cards = {card.pop("id"): card for card in http.get("/v1/models").json()["data"]}
    assert sorted(cards) == sorted(m.name for m in listed.models)
    for model in listed.models:
        card = cards[model.name]
        assert (card.pop("object"), card.pop("owned_by")) == ("model", "reranker")
        kind = pb.ModelKind.Name(model.kind).removeprefix("MODEL_KIND_")
        assert card.pop("kind") == kind.lower().replace("_", "-")
        state = pb.ModelState.Name(model.state).removeprefix("MODEL_STATE_")
        assert card.pop("state") == state.lower() == "loaded"
        fields = {f.name for f in pb.ModelInfo.DESCRIPTOR.fields} - {"name", "kind", "state"}
        assert card == {name: getattr(model, name) for name in fields}


def test_openapi_describes_every_route(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    for route in (
        "/v2/rerank",
        "/v1/rerank",
        "/rerank",
        "/reranking",
        "/v1/reranking",
        "/voyage/v1/rerank",
        "/score",
        "/v1/score",
        "/info",
        "/v1/ranking",
        "/v1/models",
    ):
        assert route in paths
    assert http.get("/docs").status_code == 200


TOO_MANY = {"query": "q", "texts": ["d"] * 1001}
BAD_INPUTS = [
    ("malformed JSON", "/v2/rerank", b'{"query": "q", "documents": [', 400, "not valid JSON"),
    ("wrong type", "/v2/rerank", {"query": "q", "documents": "one"}, 400, "documents"),
    ("missing field", "/v2/rerank", {"documents": ["d"]}, 400, "query: Field required"),
    ("empty query", "/v1/rerank", {"query": " ", "documents": ["d"]}, 400, "query must not be"),
    ("bad top_n", "/v2/rerank", {"query": "q", "documents": ["d"], "top_n": 0}, 400, "top_n"),
    ("too many documents", "/rerank", TOO_MANY, 400, "max_documents_per_call=1000"),
    (
        "unknown model",
        "/v2/rerank",
        {"model": "nope", "query": "q", "documents": ["d"]},
        400,
        "'nope' is not served",
    ),
    (
        "left truncation",
        "/rerank",
        {"query": "q", "texts": ["d"], "truncation_direction": "Left"},
        400,
        "LEFT is not supported",
    ),
    (
        "rank_fields",
        "/v1/rerank",
        {"query": "q", "documents": ["d"], "rank_fields": ["t"]},
        400,
        "",
    ),
    (
        "NIM truncate NONE",
        "/v1/ranking",
        {"model": CROSS_ENCODER, "query": {"text": "q"}, "passages": [{"text": "word " * 2000}]},
        400,
        "truncation is REFUSE",
    ),
    (
        "TEI truncate false",
        "/rerank",
        {"query": "q", "texts": ["short", "word " * 2000], "truncate": False},
        400,
        "documents[1] has",
    ),
    ("unknown route", "/v3/rerank", {"query": "q"}, 404, "no route /v3/rerank"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_its_status_and_a_json_error(
    http: httpx.Client, path: str, body: Any, status: int, message: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(path, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in error_message(path, response.json())
    good = http.post("/v2/rerank", json={"query": "q", "documents": ["a", "b"]})
    assert good.status_code == 200, good.text


def test_timeout_header_bounds_the_call(http: httpx.Client) -> None:
    documents = [f"{text} {i}" for i in range(8) for text in DOCUMENTS]
    body = {"model": CROSS_ENCODER, "query": QUERY, "documents": documents}
    expired = http.post("/v2/rerank", json=body, headers={"x-request-timeout": "0.001"})
    assert expired.status_code == 504, expired.text
    assert "deadline" in error_message("/v2/rerank", expired.json())
    for bad in ("soon", "-1", "0", "inf"):
        refused = http.post("/v2/rerank", json=body, headers={"x-request-timeout": bad})
        assert refused.status_code == 400, (bad, refused.text)
    ok = http.post("/v2/rerank", json=body, headers={"x-request-timeout": "60"})
    assert ok.status_code == 200


def test_tei_grpc_api(server: Server, grpc_client: RerankClient) -> None:
    expected = reference(grpc_client, model=DEFAULT_MODEL_NAME, return_documents=True)
    with grpc.insecure_channel(server.address) as channel:
        rerank = tei_pb2_grpc.RerankStub(channel)
        response = rerank.Rerank(
            tei_pb2.RerankRequest(query=QUERY, texts=DOCUMENTS, return_text=True, truncate=True)
        )
        got = [(r.index, r.score) for r in response.ranks]
        assert_same_ranking(got, expected, tolerance=1e-6)  # TEI's score is a float32
        assert [r.text for r in response.ranks] == [e["text"] for e in expected]
        streamed = rerank.RerankStream(
            iter(tei_pb2.RerankStreamRequest(query=QUERY, text=d) for d in DOCUMENTS)
        )
        assert_same_ranking([(r.index, r.score) for r in streamed.ranks], expected)
        assert all(not r.HasField("text") for r in streamed.ranks)
        with pytest.raises(grpc.RpcError) as raised:
            rerank.Rerank(
                tei_pb2.RerankRequest(
                    query=QUERY,
                    texts=DOCUMENTS,
                    truncation_direction=tei_pb2.TRUNCATION_DIRECTION_LEFT,
                )
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as raised:
            rerank.RerankStream(
                iter(
                    [
                        tei_pb2.RerankStreamRequest(query="one", text="a"),
                        tei_pb2.RerankStreamRequest(query="two", text="b"),
                    ]
                )
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "another query" in (raised.value.details() or "")
        info = tei_pb2_grpc.InfoStub(channel).Info(tei_pb2.InfoRequest())
        assert info.model_id == DEFAULT_MODEL_NAME
        assert info.model_type == tei_pb2.MODEL_TYPE_RERANKER
        assert info.max_client_batch_size == 1000
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (listing,) = list(reflection.ServerReflectionInfo(iter([request])))
        names = {s.name for s in listing.list_services_response.service}
        assert {"reranker.v1.Rank", "tei.v1.Rerank", "tei.v1.Info"} <= names
