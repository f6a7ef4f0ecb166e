from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from reranker.contract.model import Activation, ModelKind, ServedModel
from reranker.service.calls import RankCall
from reranker.service.chunking import Chunk, best_per_document, plan_windows
from reranker.service.engine import plan_requests
from reranker.service.errors import InvalidArgument
from reranker.service.results import activate, assemble
from reranker.service.validation import validate
from tests.unit.test_limits import LIMITS
from tests.windows import reference_windows

MODEL = ServedModel("m", ModelKind.CROSS_ENCODER, "Bert", 512, Activation.SIGMOID, ("input_ids",))


@pytest.mark.parametrize(
    ("query", "documents", "top_k", "field"),
    [
        ("", ["a"], None, "query"),
        ("  \n", ["a"], None, "query"),
        ("q", [], None, "documents"),
        ("q", ["a", ""], None, "documents[1]"),
        ("q", ["a", " \t"], None, "documents[1]"),
        ("q", ["a"], 0, "top_k"),
        ("q", ["a"], -2, "top_k"),
    ],
)
def test_validation_names_the_field(
    query: str, documents: list[str], top_k: int | None, field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate(RankCall(query, documents, top_k=top_k), MODEL, LIMITS)
    assert str(raised.value).startswith(field + " ")


def test_valid_request_passes() -> None:
    valid = validate(RankCall("q", ["a", "b"], top_k=1), MODEL, LIMITS)
    assert valid.documents == ["a", "b"] and valid.chunking is None
    validate(RankCall("q", ["a"]), MODEL, LIMITS)


@pytest.mark.parametrize(("count", "max_rows"), [(1, 32), (32, 32), (33, 32), (100, 32), (7, 1)])
def test_plan_covers_every_row_once_in_balanced_requests(count: int, max_rows: int) -> None:
    documents = [("x" * ((i * 37) % 101)) or "y" for i in range(count)]
    plan = plan_requests(documents, max_rows)
    flat = [i for request in plan for i in request]
    assert sorted(flat) == list(range(count))
    sizes = [len(request) for request in plan]
    assert max(sizes) <= max_rows
    assert max(sizes) - min(sizes) <= 1
    assert len(plan) == -(-count // max_rows)


def test_plan_groups_rows_of_similar_length() -> None:
    documents = ["a" * n for n in (50, 1, 40, 2, 30, 3)]
    plan = plan_requests(documents, 3)
    assert [sorted(len(documents[i]) for i in r) for r in plan] == [[1, 2, 3], [30, 40, 50]]


def test_plan_rejects_nonpositive_size() -> None:
    with pytest.raises(ValueError):
        plan_requests(["a"], 0)


def test_activate() -> None:
    raw = np.array([0.0, 2.0, -3.0], dtype=np.float32)
    sigmoid = Activation.SIGMOID
    np.testing.assert_allclose(activate(raw, sigmoid, False), 1 / (1 + np.exp(-raw)))
    np.testing.assert_array_equal(activate(raw, sigmoid, True), raw)
    np.testing.assert_array_equal(activate(raw, Activation.NONE, False), raw)
    # An unknown activation never gets this far: the model's description refuses it
    # (tests/unit/test_parameters.py).


def test_assemble_sorts_best_first_keeps_tie_order_and_cuts() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.9])
    ranked = assemble(scores, ["a", "b", "c", "d"], None, False)
    assert [r.index for r in ranked] == [1, 3, 2, 0]
    assert all(r.text is None for r in ranked)
    top = assemble(scores, ["a", "b", "c", "d"], 2, True)
    assert [(r.index, r.text) for r in top] == [(1, "b"), (3, "d")]
    assert assemble(scores, ["a", "b", "c", "d"], 10, False)[-1].index == 0


def test_windows_cover_the_document_on_word_boundaries() -> None:
    # words of 1, 2 and 3 tokens
    word_ids = [w for w in range(30) for _ in range(1 + w % 3)]
    windows = plan_windows(word_ids, window=10, overlap=3, max_chunks=100)
    assert windows[0][0] == 0 and windows[-1][1] == len(word_ids)
    for start, end in windows:
        assert 0 < end - start <= 10
        assert start == 0 or word_ids[start] != word_ids[start - 1]
        assert end == len(word_ids) or word_ids[end] != word_ids[end - 1]
    for (s1, e1), (s2, _) in itertools.pairwise(windows):
        assert s1 < s2 <= e1  # advancing, overlapping or touching: nothing skipped
        assert e1 - s2 <= 3


def test_windows_are_capped_and_oversized_words_are_cut() -> None:
    assert len(plan_windows(list(range(100)), window=10, overlap=0, max_chunks=3)) == 3
    assert plan_windows([0] * 25, window=10, overlap=0, max_chunks=10) == [
        (0, 10),
        (10, 20),
        (20, 25),
    ]
    assert plan_windows([0, 1, 2], window=10, overlap=2, max_chunks=4) == [(0, 3)]
    with pytest.raises(ValueError):
        plan_windows([0, 1], window=4, overlap=4, max_chunks=1)


def test_best_per_document() -> None:
    chunks = [Chunk(0, "a"), Chunk(1, "b"), Chunk(0, "c"), Chunk(2, "d")]
    best = best_per_document(np.array([0.1, 0.5, 0.7, -1.0]), chunks, 3)
    assert best.tolist() == [0.7, 0.5, -1.0]


@pytest.mark.parametrize("seed", range(40))
def test_windows_match_the_word_by_word_reference(seed: int) -> None:
    rng = random.Random(seed)
    word_ids: list[int | None] = []
    for word in range(rng.randrange(1, 120)):
        word_ids += [word] * rng.randint(1, 4)  # words of one to four tokens
    window = rng.randint(4, 40)
    overlap = rng.randint(0, window // 2)
    max_chunks = rng.randint(1, 20)
    assert plan_windows(word_ids, window, overlap, max_chunks) == reference_windows(
        word_ids, window, overlap, max_chunks
    )
