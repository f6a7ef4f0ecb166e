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
    and leave at least one column after it."""

    rows: np.ndarray
    prefix: int


def _common_prefix(ids: np.ndarray) -> int:
    """How many leading tokens every row of ``ids`` has in common."""
    differs = np.flatnonzero((ids != ids[:1]).any(axis=0))
    return int(differs[0]) if differs.size else ids.shape[1]


def _group(rows: list[int], ids: np.ndarray, lengths: np.ndarray) -> PrefixGroup:
    members = np.asarray(sorted(rows))
    width = int(lengths[members].max())
    # A run leaves the prefix one column at least, padded where every row ends inside it;
    # the graph needs one prefix token at least.
    common = _common_prefix(ids[members, : max(width, 1)])
    return PrefixGroup(members, max(1, min(common, width - 1)))


def prefix_groups(ids: np.ndarray, mask: np.ndarray) -> list[PrefixGroup]:
    """The batch's rows (right-padded) as groups that each run in one pass. Rows that begin
    with the same ``MIN_SHARED_PREFIX`` tokens form a group: one call's rows, or several
    calls' behind a long system text. The others group by their first token, so a template-
    less model's rows (which begin with the query) still share what they can; each group's
    prefix stops short of its longest row. A row may end inside its group's prefix: causal
    attention makes its last token's state the same as when it runs alone."""
    lengths = mask.sum(axis=1)
    by_start: dict[bytes, list[int]] = {}
    for row in range(ids.shape[0]):
        by_start.setdefault(ids[row, :MIN_SHARED_PREFIX].tobytes(), []).append(row)
    groups: list[PrefixGroup] = []
    by_first: dict[int, list[int]] = {}
    for members in by_start.values():
        group = _group(members, ids, lengths)
        if len(members) > 1 and group.prefix >= MIN_SHARED_PREFIX:
            groups.append(group)
        else:
            for row in members:
                by_first.setdefault(int(ids[row, 0]), []).append(row)
    groups += [_group(members, ids, lengths) for members in by_first.values()]
    return sorted(groups, key=lambda group: int(group.rows[0]))


def run_groups(
    feeds: Mapping[str, np.ndarray],
    groups: list[PrefixGroup],
    run: Callable[[Mapping[str, np.ndarray], int], np.ndarray],
) -> np.ndarray:
    """One score per row of ``feeds``: ``run(group_feeds, prefix)`` for each group, on its
    rows cut to its longest row (right padding beyond it changes no score), scattered back
    into the batch's order."""
    lengths = feeds["attention_mask"].sum(axis=1)
    scores = np.empty(feeds["attention_mask"].shape[0], dtype=np.float32)
    for group in groups:
        width = max(int(lengths[group.rows].max()), group.prefix + 1)
        cut = {name: _columns(values[group.rows], width) for name, values in feeds.items()}
        scores[group.rows] = run(cut, group.prefix)
    return scores


def _columns(values: np.ndarray, width: int) -> np.ndarray:
    """``values`` with exactly ``width`` columns: cut, or padded with zeros (masked out)."""
    if values.shape[1] >= width:
        return values[:, :width]
    padded = np.zeros((values.shape[0], width), dtype=values.dtype)
    padded[:, : values.shape[1]] = values
    return padded


def split_prefix(feeds: Mapping[str, np.ndarray], prefix: int) -> dict[str, np.ndarray]:
    """The feeds of a graph that takes the prefix apart: ``prefix_ids`` ``[1, prefix]``,
    each row's ``input_ids`` after it, and the whole rows' ``attention_mask``."""
    ids = feeds["input_ids"]
    return {
        PREFIX_IDS: ids[:1, :prefix],
        "input_ids": ids[:, prefix:],
        "attention_mask": feeds["attention_mask"],
    }


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
