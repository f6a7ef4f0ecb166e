from __future__ import annotations

import numpy as np

from reranker.inference import merge_ragged, split_rows


def test_merge_pads_each_request_to_the_longest_and_split_restores_order() -> None:
    a = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.array([[1, 1, 1]])}
    b = {
        "input_ids": np.array([[4, 5, 6, 7, 8], [9, 10, 0, 0, 0]]),
        "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),
    }
    merged = merge_ragged([a, b], ["input_ids", "attention_mask"])
    assert merged["input_ids"].shape == (3, 5)
    assert merged["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(merged["input_ids"][0], [1, 2, 3, 0, 0])
    np.testing.assert_array_equal(merged["attention_mask"][0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(merged["input_ids"][1:], b["input_ids"])
    parts = split_rows(np.arange(3).reshape(3, 1), [1, 2])
    assert [p.ravel().tolist() for p in parts] == [[0], [1, 2]]
