"""A causal-LM reranker's rows begin with one prompt: the system text, the instruction and
the query. Under causal attention that prefix's keys and values are the same in every row,
so a run computes them once and each row's rest attends to them. This module finds the
rows of a batch that share a prefix, whichever calls they came from; the runtimes run each
group as one pass (the ONNX graph that takes ``prefix_ids`` and the PyTorch runtime)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from reranker.backend.runtimes import GraphRunner
from reranker.contract.tensors import PREFIX_IDS

# Rows that share fewer leading tokens than this are not grouped by their prefix alone.
MIN_SHARED_PREFIX = 16


@dataclass(frozen=True)
class PrefixGroup:
    """Rows of a batch (their indices, ascending) that begin with the same ``prefix`` tokens
    and leave at least one column after it; ``prefix`` 0: rows that run whole."""

    rows: np.ndarray
    prefix: int


def common_prefix(ids: np.ndarray) -> int:
    """How many leading tokens every row of ``ids`` has in common."""
    differs = np.flatnonzero((ids != ids[:1]).any(axis=0))
    return int(differs[0]) if differs.size else ids.shape[1]


def prefix_groups(ids: np.ndarray, mask: np.ndarray) -> list[PrefixGroup]:
    """The batch's rows (right-padded) as groups that each run in one pass. Rows that begin
    with the same ``MIN_SHARED_PREFIX`` tokens form a group behind their common prefix (one
    call's rows, or several calls' behind a long system text they share), which stops short
    of the group's longest row. The others form one group of rows that run whole (prefix 0):
    a row alone in its prompt, or a template-less model's rows behind a short query."""
    lengths = mask.sum(axis=1)
    by_start: dict[bytes, list[int]] = {}
    for row in range(ids.shape[0]):
        by_start.setdefault(ids[row, :MIN_SHARED_PREFIX].tobytes(), []).append(row)
    groups: list[PrefixGroup] = []
    whole: list[int] = []
    for members in by_start.values():
        rows = np.asarray(members)
        width = int(lengths[rows].max())
        prefix = min(common_prefix(ids[rows, :width]), width - 1)
        if len(members) > 1 and prefix >= MIN_SHARED_PREFIX:
            groups.append(PrefixGroup(rows, prefix))
        else:
            whole += members
    if whole:
        groups.append(PrefixGroup(np.asarray(sorted(whole)), 0))
    return sorted(groups, key=lambda group: int(group.rows[0]))


def run_groups(
    feeds: Mapping[str, np.ndarray],
    groups: list[PrefixGroup],
    run: Callable[[Mapping[str, np.ndarray], int], np.ndarray],
) -> np.ndarray:
    """One score per row of ``feeds``: ``run(group_feeds, prefix)`` for each group, on its
    rows cut to its longest row (right padding beyond it changes no score), scattered back
    into the batch's order. One group of every row (most batches) runs on ``feeds`` as given."""
    rows = feeds["input_ids"].shape[0]
    if len(groups) == 1 and len(groups[0].rows) == rows:
        return run(feeds, groups[0].prefix)
    lengths = feeds["attention_mask"].sum(axis=1)
    scores = np.empty(rows, dtype=np.float32)
    for group in groups:
        width = int(lengths[group.rows].max())
        cut = {name: values[group.rows, :width] for name, values in feeds.items()}
        scores[group.rows] = run(cut, group.prefix)
    return scores


def split_prefix(feeds: Mapping[str, np.ndarray], prefix: int) -> dict[str, np.ndarray]:
    """The feeds of the graph that takes the prefix apart: ``prefix_ids`` ``[1, prefix]``,
    each row's ``input_ids`` after it, and the whole rows' ``attention_mask``. ``prefix`` 0
    runs the rows whole: each row is its own prefix (``[rows, width - 1]``) and its last
    column the rest, a row shorter than the widest ending inside its prefix."""
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    if prefix:
        return {PREFIX_IDS: ids[:1, :prefix], "input_ids": ids[:, prefix:], "attention_mask": mask}
    if ids.shape[1] < 2:  # padding after it: the graph needs a column of each at least
        short = ((0, 0), (0, 2 - ids.shape[1]))
        ids, mask = np.pad(ids, short), np.pad(mask, short)
    last = ids.shape[1] - 1
    return {PREFIX_IDS: ids[:, :last], "input_ids": ids[:, last:], "attention_mask": mask}


class SharedPrefixGraph:
    """A causal-LM reranker's graph that takes ``prefix_ids`` apart from the rows, fed the
    token tensors of a batch: each prefix group of the batch is one run of the graph."""

    def __init__(self, graph: GraphRunner) -> None:
        self._graph = graph

    @property
    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"]

    def run(self, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        groups = prefix_groups(feeds["input_ids"], feeds["attention_mask"])
        return run_groups(
            {name: feeds[name] for name in self.input_names},
            groups,
            lambda cut, prefix: self._graph.run(split_prefix(cut, prefix)),
        )
