"""Late-interaction (ColBERT) rerankers end to end: a PyLate / sentence-transformers layout (on a
BERT and on a ModernBERT backbone) and a Stanford ColBERT (``HF_ColBERT``) layout, each seeded
and built here by the real builder, served through Triton and matched against
sentence-transformers' ``MultiVectorEncoder`` (``similarity(encode_query(q),
encode_document(docs))``) on the same folder; calls merged by Triton's batcher, the document
cache, every door, and the refusals."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cohere
import httpx
import numpy as np
import pytest
from reranker_client import AsyncRerankClient, InvalidArgumentError, RerankClient
from sentence_transformers import MultiVectorEncoder

from reranker.builder.builder import BuildOptions, build
from reranker.builder.common import BuildError
from reranker.builder.triton_configs import TritonTuning
from reranker.contract.model import Device, Precision, Runtime
from tests.integration.conftest import Server, start_server, stop_server
from tests.late_checkpoints import pylate_colbert, stanford_colbert
from tests.model_cache import cached_build
from tests.texts import varied_pairs

# MaxSim sums up to a query's width of dot products: the bound of the issue, absolute.
PARITY = 1e-4
MERGED = 1e-5
LONG_QUERY = " ".join(["which rivers flow north and how long are they"] * 4)
PUNCTUATION_ONLY = "!!! ... ??? ;;; --- ***"
LAYOUTS = ("pylate", "stanford", "modernbert")
CACHED = "pylate-cached"
# The same checkpoint under the PyTorch runtime (its GPU path), here in fp32 on CPU.
TORCH = "stanford-torch"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("late")
    return {
        "pylate": pylate_colbert(root / "pylate"),
        "stanford": stanford_colbert(root / "stanford"),
        "modernbert": pylate_colbert(root / "modernbert", modernbert=True),
    }


@pytest.fixture(scope="module")
def late_server(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("late_repository")
    for name, checkpoint in checkpoints.items():
        cached_build(checkpoint, BuildOptions(name=name), repository)
    cache = TritonTuning(document_cache_mb=1)
    cached_build(checkpoints["pylate"], BuildOptions(name=CACHED, tuning=cache), repository)
    torch_options = BuildOptions(name=TORCH, runtime=Runtime.TORCH)
    cached_build(checkpoints["stanford"], torch_options, repository)
    server = start_server(repository, tmp_path_factory.mktemp("late_server"), "pylate")
    try:
        yield server
    finally:
        stop_server(server)


def _calls() -> list[tuple[str, list[str]]]:
    """The parity calls: varied lengths (documents past the document length), a query past
    the query length, a document of punctuation alone."""
    by_query: dict[str, list[str]] = {}
    for query, document in varied_pairs(40):
        by_query.setdefault(query, []).append(document)
    calls = list(by_query.items())
    calls.append((LONG_QUERY, [PUNCTUATION_ONLY, calls[0][1][0], "rivers: the Nile, the Ob."]))
    return calls


def _scores(results: list[dict], count: int) -> np.ndarray:
    scores = np.empty(count)
    for result in results:
        scores[result["corpus_id"]] = result["score"]
    return scores


def _reference(encoder: MultiVectorEncoder, query: str, documents: list[str]) -> np.ndarray:
    similarity = encoder.similarity(
        encoder.encode_query([query]), encoder.encode_document(documents)
    )
    return similarity.numpy()[0].astype(np.float64)


@pytest.mark.parametrize("model", [*LAYOUTS, CACHED, TORCH])
def test_scores_and_order_match_multi_vector_encoder(
    late_server: Server, checkpoints: dict[str, Path], model: str
) -> None:
    source = checkpoints[model.removesuffix("-cached").removesuffix("-torch")]
    encoder = MultiVectorEncoder(str(source), device="cpu")
    worst = 0.0
    with RerankClient(late_server.address, timeout=120) as client:
        for query, documents in _calls():
            results = client.rank(query, documents, model=model)
            reference = _reference(encoder, query, documents)
            served = _scores(results, len(documents))
            worst = max(worst, float(np.abs(served - reference).max()))
            order = [r["corpus_id"] for r in results]
            assert order == sorted(range(len(documents)), key=lambda i: -served[i])
            # The reference's order, up to documents it scores closer than the bound.
            for first, second in itertools.pairwise(order):
                assert reference[first] >= reference[second] - 2 * PARITY
    print(f"{model}: max |served - MultiVectorEncoder| = {worst:.2e}")
    assert worst <= PARITY


async def test_calls_with_different_queries_merged_by_triton_score_as_alone(
    late_server: Server, checkpoints: dict[str, Path]
) -> None:
    calls = _calls()[:4]
    encoder = MultiVectorEncoder(str(checkpoints["pylate"]), device="cpu")
    async with AsyncRerankClient(late_server.address, timeout=120) as client:

        async def scored(query: str, documents: list[str]) -> np.ndarray:
            return _scores(await client.rank(query, documents, model="pylate"), len(documents))

        alone = [await scored(query, documents) for query, documents in calls]
        merged = False
        for _ in range(10):
            before = _encoder_counts(late_server, "pylate__encoder")
            together = await asyncio.gather(*(scored(q, d) for q, d in calls))
            after = _encoder_counts(late_server, "pylate__encoder")
            for scores, lone in zip(together, alone, strict=True):
                assert np.abs(scores - lone).max() <= MERGED
            requests, runs = after[0] - before[0], after[1] - before[1]
            merged = runs < requests
            if merged:
                break
    assert merged, "Triton never ran two calls' requests in one encoder execution"
    for (query, documents), scores in zip(calls, alone, strict=True):
        assert np.abs(scores - _reference(encoder, query, documents)).max() <= PARITY


def _triton_metric(server: Server, name: str, labels: str) -> float:
    text = httpx.get(server.triton_metrics_url, timeout=10).text
    prefix = f"{name}{{{labels}"
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _encoder_counts(server: Server, encoder: str) -> tuple[float, float]:
    labels = f'model="{encoder}",'
    return (
        _triton_metric(server, "nv_inference_request_success", labels),
        _triton_metric(server, "nv_inference_exec_count", labels),
    )


def _cache_counts(server: Server) -> tuple[float, float]:
    labels = f'model="{CACHED}"'
    return (
        _triton_metric(server, "reranker_document_cache_hits_total", labels),
        _triton_metric(server, "reranker_document_cache_misses_total", labels),
    )


def test_cached_documents_skip_the_encoder_and_score_identically(late_server: Server) -> None:
    query, documents = _calls()[1]
    documents = [*documents, "A document no other test sends: the cache has not seen it."]
    with RerankClient(late_server.address, timeout=120) as client:
        uncached = _scores(client.rank(query, documents, model="pylate"), len(documents))
        hits, misses = _cache_counts(late_server)
        first = _scores(client.rank(query, documents, model=CACHED), len(documents))
        first_hits, first_misses = _cache_counts(late_server)
        runs = _encoder_counts(late_server, f"{CACHED}__encoder")
        again = _scores(client.rank(query, documents, model=CACHED), len(documents))
        again_hits, again_misses = _cache_counts(late_server)
    assert first_misses - misses >= 1  # the new document at least was encoded
    assert (first_hits - hits) + (first_misses - misses) == len(documents)
    assert (again_hits - first_hits, again_misses - first_misses) == (len(documents), 0)
    # The cached vectors are the ones the encoder made: the same scores, bit for bit.
    assert np.array_equal(again, first)
    assert np.abs(first - uncached).max() <= MERGED
    assert _encoder_counts(late_server, f"{CACHED}__encoder")[0] > runs[0]


def test_the_cache_stays_within_its_bound_and_evicts_the_least_recently_used(
    late_server: Server,
) -> None:
    """1 MiB holds fewer than 200 of these documents' vectors (each cut to 48 tokens, less
    punctuation, of 32 floats, and 300 bytes an entry): after 400 others, the first ones are
    no longer there."""
    first = [f"the first documents, number {i}: rivers run to the sea " * 6 for i in range(10)]
    others = [f"another document, number {i}, about lakes and hills " * 6 for i in range(400)]
    with RerankClient(late_server.address, timeout=120) as client:
        client.rank("where do rivers end", first, model=CACHED)
        for start in range(0, len(others), 100):
            client.rank("where do rivers end", others[start : start + 100], model=CACHED)
        hits, misses = _cache_counts(late_server)
        client.rank("where do rivers end", first, model=CACHED)
        after = _cache_counts(late_server)
        client.rank("where do rivers end", others[-10:], model=CACHED)
        recent = _cache_counts(late_server)
    assert (after[0] - hits, after[1] - misses) == (0, len(first))
    assert (recent[0] - after[0], recent[1] - after[1]) == (10, 0)


def test_every_door_serves_maxsim_scores_and_names_the_kind(
    late_server: Server, checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    query, documents = _calls()[2]
    with RerankClient(late_server.address, timeout=120) as client:
        # The default model: TEI's shape serves that one alone.
        grpc_scores = _scores(client.rank(query, documents), len(documents))
        models = {m.name: m for m in client.models()}
    assert (models["stanford"].kind, models["stanford"].scoring) == ("late-interaction", "maxsim")
    sdk = cohere.ClientV2(base_url=late_server.http_url, api_key="unused")
    response = sdk.rerank(model="pylate", query=query, documents=documents)
    cohere_scores = np.empty(len(documents))
    for result in response.results:
        cohere_scores[result.index] = result.relevance_score
    assert np.abs(cohere_scores - grpc_scores).max() <= MERGED
    # Usage: each row's query and document tokens as transformers' tokenizer counts them, cut
    # to the query and document lengths (the query's expansion not counted).
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["pylate"])
    query_tokens = len(tokenizer("[Q] " + query, truncation=True, max_length=16)["input_ids"])
    document_tokens = [
        len(tokenizer("[D] " + d, truncation=True, max_length=48)["input_ids"]) for d in documents
    ]
    assert response.meta is not None and response.meta.tokens is not None
    expected = query_tokens * len(documents) + sum(document_tokens)
    assert response.meta.tokens.input_tokens == expected
    tei = httpx.post(
        late_server.http_url + "/rerank",
        json={"query": query, "texts": documents, "raw_scores": False},
        timeout=60,
    )
    assert tei.status_code == 200, tei.text
    tei_scores = np.empty(len(documents))
    for entry in tei.json():
        tei_scores[entry["index"]] = entry["score"]
    assert np.abs(tei_scores - grpc_scores).max() <= MERGED
    cards = {c["id"]: c for c in httpx.get(late_server.http_url + "/v1/models").json()["data"]}
    assert (cards["pylate"]["kind"], cards["pylate"]["scoring"]) == ("late-interaction", "maxsim")


def test_options_that_do_not_apply_or_do_not_fit_are_refused_by_name(
    late_server: Server, checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    query, documents = "where do rivers end", _calls()[0][1]
    long_document = "rivers " * 200
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["pylate"])
    first_five = tokenizer.convert_tokens_to_string(tokenizer.tokenize(long_document)[:5])
    too_long = r"documents\[1\] has more than \d+ tokens;.* 48 document tokens"
    with RerankClient(late_server.address, timeout=120) as client:
        with pytest.raises(InvalidArgumentError, match="chunking is not offered"):
            client.rank(query, documents, model="pylate", chunking=True)
        with pytest.raises(InvalidArgumentError, match=r"the query has \d+ tokens.*16 query"):
            client.rank(LONG_QUERY, documents, model="pylate", truncation="refuse")
        with pytest.raises(InvalidArgumentError, match=too_long):
            client.rank(query, [documents[0], long_document], model="pylate", truncation="refuse")
        # max_document_tokens keeps that many of the document's own tokens.
        capped = client.rank(query, [long_document], model="pylate", max_document_tokens=5)
        short = client.rank(query, [first_five], model="pylate")
        assert abs(capped[0]["score"] - short[0]["score"]) <= MERGED
        # The server goes on serving.
        assert len(client.rank(query, documents, model="pylate")) == len(documents)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"precision": Precision.INT8}, "fp32 on CPU"),
        ({"runtime": Runtime.TORCH, "precision": Precision.INT8}, "int8"),
        ({"device": Device.GPU}, "--runtime torch"),
    ],
)
def test_the_build_refuses_what_it_cannot_serve(
    checkpoints: dict[str, Path], tmp_path: Path, options: dict, named: str
) -> None:
    with pytest.raises(BuildError, match=named):
        build(str(checkpoints["pylate"]), replace(BuildOptions(name="late"), **options), tmp_path)


# Each knob of the tokenization and scoring that the layouts above leave at one value.
VARIANTS = {
    "min-expansion-attended": {
        "expansion": "min",
        "expansion_length": 12,
        "query_length": 24,
        "attend_to_expansion": True,
    },
    "fixed-expansion-attended": {"attend_to_expansion": True},
    "no-expansion": {"expansion": None},
    "skiplist-on-queries-too": {"skiplist_tasks": ("query", "document")},
    "skiplist-on-queries-only": {"skiplist_tasks": ("query",)},
    "meanmaxsim": {"similarity": "meanmaxsim"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_expansion_skiplist_and_similarity_is_read_as_multi_vector_encoder_reads_it(
    tmp_path: Path, variant: str
) -> None:
    """The served tokenizer and encoder code, in-process on the built files, against
    ``MultiVectorEncoder`` on the same folder: the same token ids and scores."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    from reranker.backend.batching import RunCost
    from reranker.backend.late_interaction import LateScorer, LateTokenizer
    from reranker.backend.runtimes import create_session
    from reranker.contract.parameters import (
        LateEncoderParameters,
        LateTokenizerParameters,
        from_parameters,
    )

    checkpoint = pylate_colbert(tmp_path / variant, **VARIANTS[variant])  # type: ignore[arg-type]
    model = build(str(checkpoint), BuildOptions(name="late", share_tokenizer=False), tmp_path)

    def parameters(folder: str, kind: type) -> object:
        config = text_format.Parse(
            (tmp_path / folder / "config.pbtxt").read_text(), mc.ModelConfig()
        )
        raw = {key: value.string_value for key, value in config.parameters.items()}
        return from_parameters(kind, raw, folder)

    tokenizer_parameters = parameters(model.tokenizer_model, LateTokenizerParameters)
    encoder_parameters = parameters(model.encoder_model, LateEncoderParameters)
    tokenizer = LateTokenizer.from_file(
        str(tmp_path / model.tokenizer_model / "1" / "tokenizer.json"),
        tokenizer_parameters,  # type: ignore[arg-type]
    )
    session = create_session(tmp_path / model.encoder_model / "1" / "model.onnx", 0)
    scorer = LateScorer(
        lambda ids, attention: session.run(None, {"input_ids": ids, "attention_mask": attention})[
            0
        ],
        1 << 22,
        16,
        RunCost(),
        mean=encoder_parameters.mean_maxsim,  # type: ignore[attr-defined]
    )
    encoder = MultiVectorEncoder(str(checkpoint), device="cpu")
    for query, documents in _calls():
        rows, _ = tokenizer.queries([query])
        features = encoder.preprocess([query], prompt=encoder.prompts["query"], task="query")
        width = features["input_ids"].shape[1]
        assert rows["query_input_ids"][0, :width].tolist() == features["input_ids"][0].tolist()
        request = {name: np.repeat(values, len(documents), axis=0) for name, values in rows.items()}
        request.update(tokenizer.documents(documents))
        served, _ = scorer.score([request])
        assert np.abs(served - _reference(encoder, query, documents)).max() <= PARITY
