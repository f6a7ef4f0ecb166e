from __future__ import annotations

import itertools
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from reranker.backend.batching import RunCost, micro_batches, pad_batch, pool_rows, split_rows


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


def test_micro_batches_cover_every_row_within_the_budgets() -> None:
    lengths = [10, 100, 20, 100, 5000, 30]
    batches = micro_batches(lengths, max_cells=2 * 100 * 100, max_rows=8)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [4] in batches  # over the cell budget alone: runs by itself
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * longest**2 <= 2 * 100 * 100
    # Equal lengths: as few calls as the row limit allows.
    assert micro_batches([7] * 10, max_cells=10**6, max_rows=16) == [list(range(10))]
    sizes = sorted(len(b) for b in micro_batches([7] * 10, max_cells=10**6, max_rows=4))
    assert sum(sizes) == 10 and len(sizes) == 3


def test_a_long_row_is_not_padded_into_a_batch_of_short_ones() -> None:
    lengths = [100] * 15 + [600]
    batches = micro_batches(lengths, max_cells=1 << 30, max_rows=16)
    assert [15] in batches
    assert sorted(len(b) for b in batches) == [1, 15]
    # The split is the cheapest: no other grouping of the sorted rows costs less.
    cost = RunCost()
    chosen = sum(cost(len(b), max(lengths[i] for i in b)) for b in batches)
    assert chosen < cost(16, 600)
    assert chosen <= cost(8, 100) + cost(8, 600)


def test_long_tailed_lengths_cost_less_than_fixed_sorted_batches() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.lognormal(4.6, 0.35, 100)]  # mean ~105, long tail
    cost = RunCost()
    batches = micro_batches(lengths, max_cells=1 << 22, max_rows=16)
    planned = sum(cost(len(b), max(lengths[i] for i in b)) for b in batches)
    ordered = sorted(lengths)
    fixed = sum(cost(len(ordered[i : i + 16]), max(ordered[i : i + 16])) for i in range(0, 100, 16))
    assert planned < fixed


def test_split_rows_restores_requests() -> None:
    parts = split_rows(np.arange(3).reshape(3, 1), [1, 2])
    assert [p.ravel().tolist() for p in parts] == [[0], [1, 2]]


def test_the_token_budget_bounds_each_micro_batch() -> None:
    lengths = [40] * 20 + [300] * 3
    batches = micro_batches(lengths, max_cells=10**9, max_rows=64, max_tokens=400)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 400
    # The bound binds: without it every row would share one batch.
    assert len(micro_batches(lengths, max_cells=10**9, max_rows=64)) < len(batches)
    # A row longer than the budget still runs, alone.
    assert micro_batches([500, 10], max_cells=10**9, max_rows=64, max_tokens=400) == [[0], [1]]


def test_a_larger_fixed_cost_per_run_makes_fewer_larger_batches() -> None:
    lengths = [8, 16, 32, 64, 128, 256] * 4
    cheap = micro_batches(lengths, 10**9, 64, RunCost(overhead_tokens=1))
    launch_bound = micro_batches(lengths, 10**9, 64, RunCost(overhead_tokens=4096))
    assert len(launch_bound) < len(cheap)


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 600), min_size=1, max_size=8),
    max_rows=st.integers(1, 8),
    max_cells=st.sampled_from([1 << 14, 1 << 18, 1 << 22]),
    max_tokens=st.sampled_from([0, 300, 2000]),
    overhead=st.sampled_from([0.0, 16.0, 1024.0]),
)
def test_the_plan_is_the_cheapest_cut_of_the_sorted_rows(
    lengths: list[int], max_rows: int, max_cells: int, max_tokens: int, overhead: float
) -> None:
    """Against every way of cutting the length-sorted rows into contiguous batches."""

    def allowed(group: list[int]) -> bool:
        longest = max(group)
        fits = len(group) <= max_rows and len(group) * longest * longest <= max_cells
        fits = fits and not 0 < max_tokens < len(group) * longest
        return len(group) == 1 or fits

    def price(group: list[int]) -> float:
        longest = max(group)
        return overhead + len(group) * longest * (1.0 + longest / 1024.0)

    ordered = sorted(lengths)
    cheapest = math.inf
    for cuts in itertools.product([False, True], repeat=len(ordered) - 1):
        groups, current = [], [ordered[0]]
        for length, cut in zip(ordered[1:], cuts, strict=True):
            if cut:
                groups.append(current)
                current = []
            current.append(length)
        groups.append(current)
        if all(allowed(g) for g in groups):
            cheapest = min(cheapest, sum(price(g) for g in groups))
    plan = micro_batches(
        lengths, max_cells, max_rows, RunCost(overhead_tokens=overhead), max_tokens
    )
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    planned = [[lengths[i] for i in batch] for batch in plan]
    assert all(allowed(g) for g in planned)
    assert math.isclose(sum(price(g) for g in planned), cheapest, rel_tol=1e-12)
