"""DeBERTa-v2 attention over the used relative positions only: same scores, in torch and ONNX."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

from reranker.backend.runtimes import create_session
from reranker.builder.deberta import used_span_attention
from reranker.builder.onnx_export import export_cross_encoder

# Small buckets so short sequences reach every regime: exact positions (|r| < 8), log buckets
# (8 <= |r|), and sequences longer than the table (span capped at 16 rows each side).
BUCKETS = 16
LENGTHS = (1, 5, 12, 30, 63)


def small_deberta(share_att_key: bool) -> DebertaV2ForSequenceClassification:
    torch.manual_seed(0)
    config = DebertaV2Config(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        relative_attention=True,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
    )
    # Not in the typed signature of transformers 5's config; read as attributes.
    config.position_buckets = BUCKETS
    config.share_att_key = share_att_key
    config.num_labels = 1
    return DebertaV2ForSequenceClassification(config).eval()


def batch(length: int, rows: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(length)
    ids = rng.integers(1, 100, size=(rows, length), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, max(1, length // 2) :] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def logits(model: DebertaV2ForSequenceClassification, feeds: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
        return np.asarray(model(**tensors).logits.numpy())


@pytest.mark.parametrize("share_att_key", [True, False])
def test_used_span_gives_the_same_scores_in_torch(share_att_key: bool) -> None:
    model = small_deberta(share_att_key)
    for length in LENGTHS:
        feeds = batch(length)
        full = logits(model, feeds)
        with used_span_attention():
            sliced = logits(model, feeds)
        np.testing.assert_allclose(sliced, full, rtol=0, atol=1e-6)
    # The patch is gone once the block ends.
    from transformers.models.deberta_v2 import modeling_deberta_v2

    assert (
        "used"
        not in modeling_deberta_v2.DisentangledSelfAttention.disentangled_attention_bias.__name__
    )


def test_exported_graph_slices_per_length_and_matches_torch(tmp_path: Path) -> None:
    model = small_deberta(share_att_key=True)
    path = tmp_path / "model.onnx"
    export_cross_encoder(model, batch(7), path)  # traced at one length, run at all of them
    session = create_session(path, 1)
    for length in LENGTHS:
        feeds = batch(length)
        names = [i.name for i in session.get_inputs()]
        (scores,) = session.run(None, {name: feeds[name] for name in names})
        np.testing.assert_allclose(scores, logits(model, feeds), rtol=0, atol=1e-5)
