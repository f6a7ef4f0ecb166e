"""Deterministic benchmark inputs: real prose from the Python reference topics."""

from __future__ import annotations

import random

QUERY = "how does the interpreter handle an exception raised inside a loop"

# name: (documents, fewest words, most words)
WORKLOADS = {"a": (100, 55, 80), "b": (100, 15, 25), "c": (20, 1400, 1600)}


def workload(name: str, seed: int = 0) -> list[str]:
    """Deterministic documents of real prose (the Python reference topics, without their
    grammar rules and code samples)."""
    from pydoc_data.topics import topics

    from reranker.builder.evaluation import prose_paragraphs

    words = " ".join(
        p for _, text in sorted(topics.items()) for p in prose_paragraphs(text)
    ).split()
    count, fewest, most = WORKLOADS[name]
    rng = random.Random(seed)
    documents = []
    for _ in range(count):
        size = rng.randint(fewest, most)
        start = rng.randrange(len(words) - size)
        documents.append(" ".join(words[start : start + size]))
    return documents


def long_documents(count: int = 4, words: int = 7000) -> list[str]:
    from pydoc_data.topics import topics

    from reranker.builder.evaluation import prose_paragraphs

    text = " ".join(p for _, t in sorted(topics.items()) for p in prose_paragraphs(t)).split()
    return [" ".join(text[i * words : (i + 1) * words]) for i in range(count)]
