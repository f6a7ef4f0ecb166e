"""Several architectures served at once: long context, precision, interleaved traffic."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from reranker_client import AsyncRerankClient, RerankClient
from transformers import AutoTokenizer

from reranker.builder.builder import BuildOptions, build_default
from reranker.builder.common import BuildError
from reranker.builder.evaluation import eval_pairs
from reranker.contract.model import Precision
from tests.integration.conftest import (
    ACCURACY_PASSAGES,
    ALL_MODELS,
    CROSS_ENCODER_TORCH,
    DEFAULT_BF16,
    DEFAULT_INT8,
    DEFAULT_TORCH,
    JINA,
    NATIVE_BF16,
    Server,
    alone_and_merged,
    fp32_reordering_bound,
    needs_bf16,
)
from tests.integration.test_parity import jina_reference
from tests.texts import MOCKINGBIRD_DOCUMENTS, MOCKINGBIRD_QUERY, varied_pairs

# The accuracy reports' pairs: the builder's 20 evaluation queries, each with its passages.
REPORT_PAIRS = 20 * ACCURACY_PASSAGES
# How far a bf16 score may move with the rows it is batched with (OpenVINO's bf16 kernels
# block a padded batch differently by shape); measured up to 0.011 on the pair scorer's cosines.
BF16_ROW_TOLERANCE = 0.03


def long_document(tokenizer: Any, tokens: int) -> str:
    """A document of exactly ``tokens`` tokens (alone, without special tokens) of real prose
    about the Python language."""
    text = " ".join(dict.fromkeys(p.passage for p in eval_pairs()))
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        text = f"{text} {text}"
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return text[: offsets["offset_mapping"][tokens - 1][1]]


def test_an_8000_token_pair_is_served_with_the_8192_limit(
    server: Server, jina_export: tuple[Path, Any]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(jina_export[0])
    document = long_document(tokenizer, 7980)
    query = "what does the documentation say about loops"
    length = len(tokenizer(query, document)["input_ids"])
    assert 7990 <= length <= 8192
    with RerankClient(server.address, timeout=300) as client:
        start = time.perf_counter()
        (result,) = client.rank(query, [document], model=JINA, truncation="refuse")
        elapsed = time.perf_counter() - start
    reference = jina_reference(jina_export, [(query, document)])
    delta = abs(result["score"] - reference[0])
    print(f"{length}-token pair served in {elapsed:.2f}s, |served - reference| {delta:.1e}")
    assert delta <= 1e-5


def test_short_pairs_are_padded_only_to_their_own_length(
    server: Server, jina_export: tuple[Path, Any]
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(jina_export[0])
    lengths = [
        len(tokenizer("short query", "a short document")["input_ids"]),
        len(tokenizer("q", "doc")["input_ids"]),
    ]
    client = triton_grpc.InferenceServerClient(server.triton_grpc)
    try:
        inputs = [
            triton_grpc.InferInput("QUERY", [2, 1], "BYTES"),
            triton_grpc.InferInput("DOCUMENT", [2, 1], "BYTES"),
        ]
        inputs[0].set_data_from_numpy(np.array([[b"short query"], [b"q"]], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([[b"a short document"], [b"doc"]], dtype=np.object_))
        result = client.infer(JINA + "__tokenizer", inputs)
        config = client.get_model_config(JINA + "__tokenizer").config
    finally:
        client.close()
    assert config.parameters["max_length"].string_value == "8192"
    assert result.as_numpy("input_ids").shape == (2, max(lengths))
    assert result.as_numpy("attention_mask").sum(axis=1).tolist() == lengths


def test_int8_accuracy_report_meets_its_bound_and_ranks_sensibly(
    server: Server, repository: Path
) -> None:
    report = json.loads(
        (repository / f"{DEFAULT_INT8}__encoder" / "1" / "accuracy.json").read_text()
    )
    print(report)
    assert report["precision"] == "int8" and report["pairs"] == REPORT_PAIRS
    assert report["spearman"] >= 0.99
    assert report["top10_overlap_min"] >= 9
    with RerankClient(server.address) as client:
        top = client.rank(MOCKINGBIRD_QUERY, MOCKINGBIRD_DOCUMENTS, model=DEFAULT_INT8, top_k=2)
    assert {r["corpus_id"] for r in top} == {0, 2}


@needs_bf16
def test_bf16_accuracy_report_meets_its_bounds_and_ranks_sensibly(
    server: Server, repository: Path
) -> None:
    report = json.loads(
        (repository / f"{DEFAULT_BF16}__encoder" / "1" / "accuracy.json").read_text()
    )
    print(report)
    assert report["precision"] == "bf16" and report["runtime"] == "openvino"
    assert report["pairs"] == REPORT_PAIRS
    assert report["spearman"] >= 0.995
    assert report["top10_overlap_mean"] >= 9.5
    assert report["top10_overlap_min"] >= 9
    with RerankClient(server.address) as client:
        fp32 = client.rank(MOCKINGBIRD_QUERY, MOCKINGBIRD_DOCUMENTS)
        bf16 = client.rank(MOCKINGBIRD_QUERY, MOCKINGBIRD_DOCUMENTS, model=DEFAULT_BF16)
    assert [r["corpus_id"] for r in bf16[:2]] == [r["corpus_id"] for r in fp32[:2]]
    for ours, reference in zip(
        sorted(bf16, key=lambda r: r["corpus_id"]),
        sorted(fp32, key=lambda r: r["corpus_id"]),
        strict=True,
    ):
        assert abs(ours["score"] - reference["score"]) <= 0.05


def test_bf16_is_served_where_this_cpu_has_native_bf16_and_refused_elsewhere(
    server: Server, tmp_path: Path
) -> None:
    """The real CPU's branch (the faked kinds' are unit tests): served on AMX or AVX-512
    BF16; refused by the builder on an AVX2-only CPU, with nothing written."""
    with RerankClient(server.address) as client:
        listed = {m.name: m.precision for m in client.models()}
    if NATIVE_BF16:
        assert listed[DEFAULT_BF16] == "bf16"
        return
    assert DEFAULT_BF16 not in listed
    with pytest.raises(BuildError, match="emulated and slower than fp32"):
        build_default(BuildOptions(name=DEFAULT_BF16, precision=Precision.BF16), tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("model", "bound"),
    [
        pytest.param(DEFAULT_BF16, lambda _: BF16_ROW_TOLERANCE, marks=needs_bf16),
        (CROSS_ENCODER_TORCH, fp32_reordering_bound),
        (DEFAULT_TORCH, fp32_reordering_bound),
    ],
)
async def test_a_row_scores_alike_alone_and_in_a_merged_batch(
    server: Server, model: str, bound: Callable[[float], float]
) -> None:
    alone, merged = await alone_and_merged(server, model)
    assert max(abs(score - alone) for score in merged) <= bound(alone), (alone, merged)


async def test_interleaved_concurrent_calls_to_every_model(server: Server) -> None:
    query = MOCKINGBIRD_QUERY
    documents = MOCKINGBIRD_DOCUMENTS + [d for _, d in varied_pairs(10)]
    async with AsyncRerankClient(server.address, timeout=120) as client:
        expected = {m: await client.rank(query, documents, model=m) for m in ALL_MODELS}
        calls = [(m, i) for i in range(3) for m in ALL_MODELS]
        results = await asyncio.gather(
            *(client.rank(query, documents[i:], model=m) for m, i in calls)
        )
    for (model, skip), result in zip(calls, results, strict=True):
        want = {r["corpus_id"]: r["score"] for r in expected[model] if r["corpus_id"] >= skip}
        got = {r["corpus_id"] + skip: r["score"] for r in result}
        assert got.keys() == want.keys(), model
        # Dynamic int8 quantizes activations with one scale per batch, so an int8 score moves
        # slightly with the rows it happens to be batched with; fp32 scores do not.
        tolerance = {DEFAULT_INT8: 5e-2, DEFAULT_BF16: BF16_ROW_TOLERANCE}.get(model, 1e-5)
        for index, score in got.items():
            assert score == pytest.approx(want[index], abs=tolerance), (model, index)
