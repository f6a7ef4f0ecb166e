"""The micro-batch planner minimises a cost model; this checks the model against ONNX
Runtime's real time on a fixed long-tailed case (the planner's reason to exist), with a wide
margin: the planned split must run clearly faster than fixed length-sorted batches."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformers import BertConfig, BertForSequenceClassification

from reranker.backend.batching import PooledRows, micro_batches, pad_batch
from reranker.backend.runtimes import OnnxRuntimeRunner
from reranker.builder.onnx_export import export_cross_encoder

# 60 short rows and 4 long ones: sorted batches of 16 pad 12 short rows to the long length.
LENGTHS = [24] * 60 + [384] * 4


def _graph(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=512,
    )
    config.num_labels = 1
    model = BertForSequenceClassification(config).eval()
    sample = {
        "input_ids": np.ones((2, 8), dtype=np.int64),
        "attention_mask": np.ones((2, 8), dtype=np.int64),
        "token_type_ids": np.zeros((2, 8), dtype=np.int64),
    }
    path = tmp_path / "model.onnx"
    export_cross_encoder(model, sample, path)
    return path


def _seconds(runner: OnnxRuntimeRunner, pooled: PooledRows, plan: list[list[int]]) -> float:
    feeds = [pad_batch(pooled, rows) for rows in plan]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for feed in feeds:
            runner.run({name: feed[name] for name in runner.input_names})
        best = min(best, time.perf_counter() - start)
    return best


def test_the_planned_split_beats_fixed_sorted_batches_in_real_time(tmp_path: Path) -> None:
    runner = OnnxRuntimeRunner(_graph(tmp_path), 1)
    rng = np.random.default_rng(0)
    rows = [rng.integers(1, 1000, length) for length in LENGTHS]
    pooled = PooledRows(
        tensors={
            "input_ids": rows,
            "attention_mask": [np.ones(len(r), dtype=np.int64) for r in rows],
            "token_type_ids": [np.zeros(len(r), dtype=np.int64) for r in rows],
        },
        lengths=list(LENGTHS),
        counts=[len(LENGTHS)],
    )
    order = sorted(range(len(LENGTHS)), key=lambda i: LENGTHS[i])
    fixed = [order[i : i + 16] for i in range(0, len(order), 16)]
    planned = micro_batches(LENGTHS, 1 << 22, 16)
    assert sorted(i for rows in planned for i in rows) == list(range(len(LENGTHS)))
    # The cost model predicts 2.4x less work (measured: 5x less time); 0.8 leaves room for noise.
    assert _seconds(runner, pooled, planned) < 0.8 * _seconds(runner, pooled, fixed)
