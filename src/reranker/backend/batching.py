"""Pure logic of the encoder model: ragged requests in, length-sorted micro-batches out.

Requests arrive padded to their own lengths (``allow_ragged_batch``). Their rows are pooled,
sorted by real length and cut into micro-batches whose attention matrices stay within a
budget (rows x length^2 cells), each padded only to its own longest row: little padding is
computed, and a batch of long-context rows cannot exhaust memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PooledRows:
    """Every row of a set of requests, trimmed to its real length."""

    tensors: dict[str, list[np.ndarray]]
    lengths: list[int]
    counts: list[int]  # rows per request, in request order


def pool_rows(requests: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]) -> PooledRows:
    tensors: dict[str, list[np.ndarray]] = {name: [] for name in names}
    lengths: list[int] = []
    counts: list[int] = []
    for request in requests:
        mask = request.get("attention_mask")
        width = request[names[0]].shape[1]
        real = mask.sum(axis=1) if mask is not None else np.full(len(request[names[0]]), width)
        counts.append(len(real))
        for row, length in enumerate(real.tolist()):
            lengths.append(int(length))
            for name in names:
                tensors[name].append(request[name][row, :length])
    return PooledRows(tensors, lengths, counts)


@dataclass(frozen=True)
class RunCost:
    """What one runtime call on a padded ``rows x length`` batch costs, in token-times:
    ``overhead_tokens + rows * length * (1 + length / quadratic_length)``: a fixed cost per
    call, the layers' cost per token, and attention's, which grows with the length until it
    equals the rest at ``quadratic_length``. The defaults were fitted to ONNX Runtime on the
    MiniLM cross-encoder (docs/benchmark.md, levers); per-token cost hardly depends on the rows
    in the batch, so padding is what a good split saves."""

    overhead_tokens: float = 16.0
    quadratic_length: float = 1024.0

    def __call__(self, rows: int, length: int) -> float:
        return float(self.many(np.asarray(rows), length))

    def many(self, rows: np.ndarray, length: int) -> np.ndarray:
        """The cost of each of ``rows`` (an array of row counts) at ``length``."""
        return self.overhead_tokens + rows * length * (1.0 + length / self.quadratic_length)


def micro_batches(
    lengths: Sequence[int],
    max_cells: int,
    max_rows: int,
    cost: RunCost = RunCost(),
    max_tokens: int = 0,
) -> list[list[int]]:
    """Row indices grouped into the batches of least total cost (each padded to its longest
    row), at most ``max_rows`` rows, ``max_cells`` attention cells (rows x longest length
    squared) and, when ``max_tokens`` is set, that many padded tokens each; a row longer
    than the budgets runs alone.

    Rows are sorted by length and cut into contiguous groups by dynamic programming: a
    long-tailed length distribution gets its few long rows batched together instead of
    padding a full batch of short ones to their length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    count = len(order)
    # best[end]: least cost of the sorted rows before ``end``; the loop over the last batch's
    # size runs in numpy, as a GPU encoder plans hundreds of rows while its device waits.
    best = np.zeros(count + 1)
    start_of = np.zeros(count + 1, dtype=np.int64)
    for end in range(1, count + 1):
        longest = lengths[order[end - 1]]
        longest = max(longest, 1)
        limit = min(max_rows, end, max(1, max_cells // (longest * longest)))
        if max_tokens > 0:
            limit = min(limit, max(1, max_tokens // longest))
        rows = np.arange(1, limit + 1)
        totals = best[end - rows] + cost.many(rows, longest)
        choice = int(np.argmin(totals))  # the first least: the fewest rows, as before
        best[end], start_of[end] = totals[choice], end - rows[choice]
    batches: list[list[int]] = []
    end = count
    while end > 0:
        start = int(start_of[end])
        batches.append(order[start:end])
        end = start
    return batches


def pad_batch(pooled: PooledRows, rows: Sequence[int]) -> dict[str, np.ndarray]:
    """The chosen rows, zero-padded to the longest of them (padding is masked out)."""
    length = max(max(pooled.lengths[i] for i in rows), 1)
    batch = {}
    for name, tensors in pooled.tensors.items():
        padded = np.zeros((len(rows), length), dtype=np.int64)
        for r, index in enumerate(rows):
            padded[r, : pooled.lengths[index]] = tensors[index]
        batch[name] = padded
    return batch


def split_rows(values: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Splits a ``[sum counts, ...]`` array back into one array per request."""
    return np.split(values, np.cumsum(counts)[:-1])
