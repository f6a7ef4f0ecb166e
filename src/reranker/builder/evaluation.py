"""A fixed set of real-text (query, passage) pairs, and how two scorings of it compare.

The passages are the Python language reference topics that ship with every CPython
(``pydoc_data.topics``): real English prose, available offline, identical everywhere.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# (query, the reference topic that answers it)
QUERIES: tuple[tuple[str, str], ...] = (
    ("how does a for loop iterate over a sequence", "for"),
    ("what happens when an exception is raised inside a try block", "try"),
    ("how do I define a function with default argument values", "function"),
    ("how does the with statement call __enter__ and __exit__", "with"),
    ("which values are considered false in a boolean context", "truth"),
    ("how are keyword arguments matched in a function call", "calls"),
    ("what does the global statement do", "global"),
    ("how do generators use the yield expression", "yield"),
    ("how are string literals and escape sequences written", "strings"),
    ("what methods do lists have for adding and removing items", "typesseq-mutable"),
    ("how are dictionaries created and what are their methods", "typesmapping"),
    ("how does the import system find and load modules", "import"),
    ("how is a class definition executed", "class"),
    ("how do comparisons between objects of different types work", "comparisons"),
    ("what is the syntax of a lambda expression", "lambda"),
    ("how does slicing a sequence with a step work", "slicings"),
    ("how can a class customize attribute access", "attribute-access"),
    ("what does the assert statement do when optimizations are enabled", "assert"),
    ("how do format strings specify width and precision", "formatstrings"),
    ("how does a while loop with an else clause behave", "while"),
)


@dataclass(frozen=True)
class EvalPair:
    query_index: int
    query: str
    passage: str


def prose_paragraphs(text: str) -> list[str]:
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        words = block.split()
        # Prose only: skip grammar rules, code samples and headings.
        if 25 <= len(words) <= 160 and "::=" not in block and not block.startswith("   "):
            paragraphs.append(" ".join(words))
    return paragraphs


def eval_pairs(passages_per_query: int = 40, seed: int = 0) -> list[EvalPair]:
    """For each query: passages of its own topic first, filled up with other topics'."""
    from pydoc_data.topics import topics

    by_topic = {name: prose_paragraphs(text) for name, text in sorted(topics.items())}
    everything = [(name, p) for name, ps in by_topic.items() for p in ps]
    rng = random.Random(seed)
    pairs: list[EvalPair] = []
    for index, (query, topic) in enumerate(QUERIES):
        own = by_topic.get(topic, [])[: passages_per_query // 4]
        others = [p for name, p in everything if name != topic]
        chosen = own + rng.sample(others, passages_per_query - len(own))
        pairs.extend(EvalPair(index, query, passage) for passage in chosen)
    return pairs


def _ranks(values: np.ndarray) -> np.ndarray:
    """0-based ranks; tied values share the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + ends - 1) / 2)[inverse.reshape(-1)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two score vectors."""
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def accuracy_report(
    reference: np.ndarray, candidate: np.ndarray, pairs: Sequence[EvalPair], k: int = 10
) -> dict[str, float]:
    """How a candidate scoring (e.g. int8) ranks the pairs compared with the reference (fp32):
    max |Δscore|, Spearman rho over all pairs, and the mean / worst top-k overlap per query."""
    groups = np.array([p.query_index for p in pairs])
    overlaps = []
    for query in np.unique(groups):
        rows = np.flatnonzero(groups == query)
        best = set(rows[np.argsort(-reference[rows], kind="stable")[:k]])
        got = set(rows[np.argsort(-candidate[rows], kind="stable")[:k]])
        overlaps.append(len(best & got))
    return {
        "pairs": float(len(pairs)),
        "max_abs_delta": float(np.abs(reference - candidate).max()),
        "spearman": spearman(reference, candidate),
        f"top{k}_overlap_mean": float(np.mean(overlaps)),
        f"top{k}_overlap_min": float(np.min(overlaps)),
    }
