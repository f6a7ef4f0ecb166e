"""Causal-LM rerankers end to end: a Qwen3-Reranker layout (instruction slot, yes/no) and an
mxbai-rerank-v2 layout (Qwen2, no instruction, "1"/"0" named by its LogitScore module), each
seeded and built here, built by the real builder (the Qwen3 one also for the PyTorch
runtime), served through Triton and matched against ``CrossEncoder.predict`` on the same
directory, with and without an instruction."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from reranker_client import InvalidArgumentError, RerankClient
from sentence_transformers import CrossEncoder

from reranker.builder.builder import BuildOptions
from reranker.contract.model import Runtime
from tests.checkpoints import mxbai_v2_reranker, qwen3_reranker, without_chat_template
from tests.integration.conftest import (
    Server,
    alone_and_merged,
    fp32_reordering_bound,
    start_server,
    stop_server,
)
from tests.integration.test_parity import PAIRS, TOLERANCE, assert_parity
from tests.model_cache import cached_build

INSTRUCTION = "Given a question about literature or science, find the passage that answers it"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal")
    qwen3 = qwen3_reranker(root / "qwen3")
    return {
        "qwen3": qwen3,
        "mxbai-v2": mxbai_v2_reranker(root / "mxbai"),
        # The same Qwen3 checkpoint without a chat template: a text pair, as CrossEncoder reads.
        "qwen3-plain": without_chat_template(qwen3, root / "qwen3-plain"),
    }


@pytest.fixture(scope="module")
def causal_server(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("causal_repository")
    for name, checkpoint in checkpoints.items():
        cached_build(checkpoint, BuildOptions(name=name), repository)
    torch_options = BuildOptions(name="qwen3-torch", runtime=Runtime.TORCH)
    cached_build(checkpoints["qwen3"], torch_options, repository)
    server = start_server(repository, tmp_path_factory.mktemp("causal_server"), "qwen3")
    try:
        yield server
    finally:
        stop_server(server)


def served(server: Server, model: str, instruction: str | None = None) -> np.ndarray:
    scores = np.empty(len(PAIRS))
    by_query: dict[str, list[int]] = {}
    for i, (query, _) in enumerate(PAIRS):
        by_query.setdefault(query, []).append(i)
    with RerankClient(server.address, timeout=120) as client:
        for query, rows in by_query.items():
            docs = [PAIRS[i][1] for i in rows]
            for result in client.rank(query, docs, model=model, instruction=instruction):
                scores[rows[result["corpus_id"]]] = result["score"]
    return scores


@pytest.mark.parametrize(
    ("model", "instruction"),
    [
        ("qwen3", None),
        ("qwen3", INSTRUCTION),
        ("mxbai-v2", None),
        ("qwen3-plain", None),
        ("qwen3-torch", None),
        ("qwen3-torch", INSTRUCTION),
    ],
)
def test_causal_rerankers_match_cross_encoder(
    causal_server: Server,
    checkpoints: dict[str, Path],
    model: str,
    instruction: str | None,
) -> None:
    cross_encoder = CrossEncoder(str(checkpoints[model.removesuffix("-torch")]), device="cpu")
    pairs = [list(p) for p in PAIRS]
    if instruction is None:
        reference = cross_encoder.predict(pairs, batch_size=16)
    else:
        reference = cross_encoder.predict(pairs, batch_size=16, prompt=instruction)
    assert reference.std() > 0.01, "the seeded model should spread scores"
    assert_parity(served(causal_server, model, instruction), reference.astype(np.float64))


def test_the_instruction_changes_the_scores_and_past_max_length_pairs_are_served(
    causal_server: Server, checkpoints: dict[str, Path]
) -> None:
    from transformers import AutoTokenizer

    default, instructed = (
        served(causal_server, "qwen3"),
        served(causal_server, "qwen3", INSTRUCTION),
    )
    assert np.abs(default - instructed).max() > 100 * TOLERANCE
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["qwen3"])
    lengths = [len(tokenizer(q + d)["input_ids"]) for q, d in PAIRS]
    assert sum(length > tokenizer.model_max_length for length in lengths) >= 10


@pytest.mark.parametrize("model", ["qwen3", "mxbai-v2", "qwen3-plain", "qwen3-torch"])
async def test_a_causal_row_scores_alike_alone_and_in_a_merged_batch(
    causal_server: Server, model: str
) -> None:
    alone, merged = await alone_and_merged(causal_server, model)
    # Under PyTorch the rows of a merged batch share their prompt's keys and values (computed
    # once), while a row alone runs whole: fp32 sums in another order, a few 1e-7 apart.
    tolerance = max(5e-6 if model.endswith("-torch") else 0.0, fp32_reordering_bound(alone))
    assert max(abs(score - alone) for score in merged) <= tolerance


def _triton_metric(server: Server, name: str, model: str) -> float:
    text = httpx.get(server.triton_metrics_url, timeout=10).text
    prefix = f'{name}{{model="{model}",'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


@pytest.mark.parametrize("model", ["qwen3", "mxbai-v2", "qwen3-plain", "qwen3-torch"])
async def test_calls_with_different_queries_merged_into_one_batch_score_exactly(
    causal_server: Server, checkpoints: dict[str, Path], model: str
) -> None:
    """Two calls with different queries at once, until Triton has run their rows in one
    encoder execution: each call's scores equal CrossEncoder's, and its scores alone."""
    from reranker_client import AsyncRerankClient

    config = httpx.get(
        f"{causal_server.triton_http_url}/v2/models/{model}__encoder/config", timeout=10
    ).json()
    shared = config["parameters"].get("shared_prefix", {}).get("string_value")
    assert shared == "true"
    calls = [
        ("what is a reranker", [d for _, d in PAIRS[:6]]),
        ("how long is the river nile", [d for _, d in PAIRS[6:11]]),
    ]
    cross_encoder = CrossEncoder(str(checkpoints[model.removesuffix("-torch")]), device="cpu")
    encoder = f"{model}__encoder"
    async with AsyncRerankClient(causal_server.address, timeout=120) as client:

        async def scored(query: str, documents: list[str]) -> np.ndarray:
            results = await client.rank(query, documents, model=model, raw_scores=True)
            scores = np.empty(len(documents))
            for result in results:
                scores[result["corpus_id"]] = result["score"]
            return scores

        alone = [await scored(query, documents) for query, documents in calls]
        merged_runs = 0
        for _ in range(10):
            requests = _triton_metric(causal_server, "nv_inference_request_success", encoder)
            runs = _triton_metric(causal_server, "nv_inference_exec_count", encoder)
            # A larger call first holds the encoder, so the two calls' rows queue behind it
            # and Triton's batcher finds them waiting together. Each call is one request (at
            # most 32 rows), each with its own query: any run shared by two requests merged
            # different queries.
            _, *together = await asyncio.gather(
                scored("a call ahead of them", [d for _, d in PAIRS[11:35]]),
                *(scored(q, d) for q, d in calls),
            )
            requests = (
                _triton_metric(causal_server, "nv_inference_request_success", encoder) - requests
            )
            runs = _triton_metric(causal_server, "nv_inference_exec_count", encoder) - runs
            for scores, lone in zip(together, alone, strict=True):
                assert np.abs(scores - lone).max() <= 5e-6
            merged_runs += runs < requests
            if merged_runs:
                break
    assert merged_runs, "Triton never merged the two calls into one execution"
    for (query, documents), scores in zip(calls, alone, strict=True):
        reference = cross_encoder.predict(
            [[query, d] for d in documents], activation_fn=torch.nn.Identity()
        )
        assert np.abs(scores - reference).max() <= TOLERANCE


def test_list_models_describes_causal_rerankers(causal_server: Server) -> None:
    with RerankClient(causal_server.address) as client:
        models = {m.name: m for m in client.models()}
    described = {
        name: (m.kind, m.architecture, m.family, m.scoring, m.takes_instruction, m.runtime)
        for name, m in models.items()
    }
    assert described == {
        "qwen3": ("causal-lm", "Qwen3ForCausalLM", "qwen3", "logit-diff", True, "onnx"),
        "mxbai-v2": ("causal-lm", "Qwen2ForCausalLM", "qwen2", "logit-diff", False, "onnx"),
        "qwen3-plain": ("causal-lm", "Qwen3ForCausalLM", "qwen3", "logit-diff", False, "onnx"),
        "qwen3-torch": ("causal-lm", "Qwen3ForCausalLM", "qwen3", "logit-diff", True, "torch"),
    }


def test_refusals_for_causal_rerankers(causal_server: Server) -> None:
    with RerankClient(causal_server.address) as client:
        with pytest.raises(InvalidArgumentError, match="instruction is not taken"):
            client.rank("q", ["d"], model="mxbai-v2", instruction="Judge")
        with pytest.raises(InvalidArgumentError, match="chunking is not offered"):
            client.rank("q", ["d"], model="qwen3", chunking=True)
        assert len(client.rank("q", ["still serving"], model="mxbai-v2")) == 1


@pytest.mark.parametrize(
    ("path", "field"),
    [("/v2/rerank", "instruction"), ("/v1/rerank", "instruct"), ("/rerank", "instruction")],
)
def test_the_instruction_over_http_is_the_grpc_instruction(
    causal_server: Server, path: str, field: str
) -> None:
    import httpx

    query, documents = PAIRS[0][0], [d for q, d in PAIRS if q == PAIRS[0][0]]
    with RerankClient(causal_server.address, timeout=120) as client:
        instructed = client.rank(query, documents, model="qwen3", instruction=INSTRUCTION)
        default = client.rank(query, documents, model="qwen3")
    expected = {r["corpus_id"]: r["score"] for r in instructed}
    assert max(abs(expected[r["corpus_id"]] - r["score"]) for r in default) > 100 * TOLERANCE
    texts = "texts" if path == "/rerank" else "documents"
    body = {"model": "qwen3", "query": query, texts: documents, field: INSTRUCTION}
    with httpx.Client(base_url=causal_server.http_url, timeout=120) as http:
        answer = http.post(path, json=body)
        refused = http.post(path, json={**body, "model": "mxbai-v2"})
    assert answer.status_code == 200, answer.text
    results = answer.json() if path == "/rerank" else answer.json()["results"]
    got = {r["index"]: r.get("relevance_score", r.get("score")) for r in results}
    assert sorted(got) == sorted(expected)
    assert max(abs(got[i] - expected[i]) for i in got) <= 1e-6
    if path != "/rerank":  # TEI's shape names no model: the default (qwen3) serves it
        assert refused.status_code == 400 and "instruction is not taken" in refused.text
