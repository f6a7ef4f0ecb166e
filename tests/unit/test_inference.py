from __future__ import annotations

import numpy as np

from reranker.inference import micro_batches, pad_batch, pool_rows, split_rows


def _request(rows: list[list[int]]) -> dict[str, np.ndarray]:
    width = max(len(r) for r in rows) + 2  # padded wider than needed, as a bucket would
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_rows_are_pooled_at_their_real_length_and_repadded_per_batch() -> None:
    pooled = pool_rows(
        [_request([[1, 2, 3]]), _request([[4, 5, 6, 7, 8], [9, 10]])],
        ["input_ids", "attention_mask"],
    )
    assert pooled.lengths == [3, 5, 2]
    assert pooled.counts == [1, 2]
    batch = pad_batch(pooled, [2, 0])
    assert batch["input_ids"].tolist() == [[9, 10, 0], [1, 2, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["input_ids"].dtype == np.int64


def test_micro_batches_sort_longest_first_and_respect_the_cell_budget() -> None:
    lengths = [10, 100, 20, 100, 5000, 30]
    batches = micro_batches(lengths, max_cells=2 * 100 * 100, max_rows=8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [4]  # over budget alone: runs by itself
    assert batches[1] == [1, 3]
    for batch in batches:
        longest = lengths[batch[0]]
        assert all(lengths[i] <= longest for i in batch)
        assert len(batch) == 1 or len(batch) * longest**2 <= 2 * 100 * 100
    assert micro_batches([7] * 10, max_cells=10**6, max_rows=16) == [list(range(10))]
    assert micro_batches([7] * 10, max_cells=10**6, max_rows=4) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]


def test_split_rows_restores_requests() -> None:
    parts = split_rows(np.arange(3).reshape(3, 1), [1, 2])
    assert [p.ravel().tolist() for p in parts] == [[0], [1, 2]]
