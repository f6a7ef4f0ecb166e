"""The encoder families beyond BERT and DeBERTa-v2, each as its best-known rerankers are laid
out (seeded, small, built here): XLM-RoBERTa (bge-reranker), ELECTRA (ms-marco-electra) and
ModernBERT (gte-reranker-modernbert), built by the real builder, served through Triton and
matched against ``CrossEncoder.predict`` on the same directory."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from reranker_client import RerankClient
from sentence_transformers import CrossEncoder

from reranker.builder.builder import BuildOptions, build
from reranker.builder.precision import REPORT_FILE, Precision
from tests.checkpoints import (
    electra_cross_encoder,
    modernbert_cross_encoder,
    xlm_roberta_cross_encoder,
)
from tests.integration.conftest import (
    Server,
    alone_and_merged,
    fp32_reordering_bound,
    start_server,
    stop_server,
)
from tests.integration.test_parity import PAIRS, assert_parity, served_scores
from tests.model_cache import cached_build

FAMILIES: dict[str, Callable[[Path], Path]] = {
    "xlm-roberta": xlm_roberta_cross_encoder,
    "electra": electra_cross_encoder,
    "modernbert": modernbert_cross_encoder,
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: make(root / name) for name, make in FAMILIES.items()}


@pytest.fixture(scope="module")
def family_server(
    checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    repository = tmp_path_factory.mktemp("families_repository")
    for name, checkpoint in checkpoints.items():
        cached_build(checkpoint, BuildOptions(name=name), repository)
    server = start_server(repository, tmp_path_factory.mktemp("families_server"), "electra")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_matches_cross_encoder(
    family_server: Server, checkpoints: dict[str, Path], family: str
) -> None:
    reference = CrossEncoder(str(checkpoints[family]), device="cpu").predict(
        [list(p) for p in PAIRS], batch_size=16
    )
    assert reference.std() > 0.05, "the seeded head should spread scores"
    assert_parity(served_scores(family_server, family), reference.astype(np.float64))


def test_modernbert_pairs_run_past_its_local_attention_window(
    checkpoints: dict[str, Path],
) -> None:
    from transformers import AutoConfig, AutoTokenizer

    directory = checkpoints["modernbert"]
    window = AutoConfig.from_pretrained(directory).local_attention
    tokenizer = AutoTokenizer.from_pretrained(directory)
    lengths = [len(tokenizer(q, d, truncation=True)["input_ids"]) for q, d in PAIRS]
    assert sum(length > window for length in lengths) >= len(PAIRS) // 2, (window, lengths)


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_each_family_scores_a_row_alike_alone_and_in_a_merged_batch(
    family_server: Server, family: str
) -> None:
    alone, merged = await alone_and_merged(family_server, family)
    assert max(abs(score - alone) for score in merged) <= fp32_reordering_bound(alone)


def test_list_models_names_each_family_architecture(family_server: Server) -> None:
    with RerankClient(family_server.address) as client:
        models = {m.name: m for m in client.models()}
    assert {name: (models[name].architecture, models[name].family) for name in FAMILIES} == {
        "xlm-roberta": ("XLMRobertaForSequenceClassification", "xlm-roberta"),
        "electra": ("ElectraForSequenceClassification", "electra"),
        "modernbert": ("ModernBertForSequenceClassification", "modernbert"),
    }
    assert {models[name].scoring for name in FAMILIES} == {"sigmoid"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_builds_in_int8_with_its_accuracy_report(
    checkpoints: dict[str, Path], tmp_path: Path, family: str
) -> None:
    options = BuildOptions(name=family, precision=Precision.INT8)
    model = build(str(checkpoints[family]), options, tmp_path)
    report = json.loads((tmp_path / model.encoder_model / "1" / REPORT_FILE).read_text())
    assert report["precision"] == "int8" and report["pairs"] >= 500
    # An untrained head's ranking means little (README: Precision); the report must still be
    # a real comparison of the quantized graph with fp32.
    assert report["max_abs_delta"] > 0 and -1 <= report["spearman"] <= 1, report
    assert 0 <= report["top10_overlap_min"] <= report["top10_overlap_mean"] <= 10, report
