"""Late interaction's pure logic: MaxSim against sentence-transformers' own, the bounded vector
cache, the query and document rows the tokenizer model makes, and each distinct row encoded
once."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sentence_transformers.util.similarity import maxsim as reference_maxsim
from tokenizers import Tokenizer

from reranker.backend.batching import RunCost
from reranker.backend.late_interaction import (
    EMPTY_DOCUMENT_SCORE,
    LateScorer,
    LateTokenizer,
    VectorCache,
    maxsim,
)
from reranker.backend.tokenization import Overflow
from reranker.contract.parameters import LateTokenizerParameters, QueryExpansion
from reranker.contract.tensors import QUERY_PART, TruncationOptions

RNG = np.random.default_rng(0)


def _unit(rows: int, dim: int = 8) -> np.ndarray:
    vectors = RNG.normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize(("q", "d"), [(4, 1), (8, 12), (32, 3)])
@pytest.mark.parametrize("mean", [False, True])
def test_maxsim_is_sentence_transformers_maxsim(q: int, d: int, mean: bool) -> None:
    query, document = _unit(q), _unit(d)
    expected = float(
        reference_maxsim(
            torch.from_numpy(query)[None], torch.from_numpy(document)[None], length_normalize=mean
        )[0, 0]
    )
    assert maxsim(query, document, mean) == pytest.approx(expected, abs=1e-5)


def test_a_document_with_no_scored_token_ranks_below_every_other() -> None:
    assert maxsim(_unit(4), np.zeros((0, 8), dtype=np.float32)) == EMPTY_DOCUMENT_SCORE


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 40)), min_size=1, max_size=60))
def test_the_cache_never_holds_more_than_its_capacity(entries: list[tuple[int, int]]) -> None:
    capacity = 4 * (40 * 8 * 4 + VectorCache.ENTRY_OVERHEAD_BYTES)
    cache = VectorCache(capacity)
    for key, rows in entries:
        cache.put(key.to_bytes(2, "big"), np.zeros((rows, 8), dtype=np.float32))
        assert cache.held_bytes <= capacity
        held = sum(
            v.nbytes + VectorCache.ENTRY_OVERHEAD_BYTES
            for k in range(31)
            if (v := cache.get(k.to_bytes(2, "big"))) is not None
        )
        assert held == cache.held_bytes


def test_the_least_recently_used_entry_goes_first() -> None:
    size = 10 * 8 * 4 + VectorCache.ENTRY_OVERHEAD_BYTES
    cache = VectorCache(2 * size)
    vectors = np.zeros((10, 8), dtype=np.float32)
    cache.put(b"a", vectors)
    cache.put(b"b", vectors)
    assert cache.get(b"a") is not None  # a is now the more recent
    cache.put(b"c", vectors)
    assert (cache.get(b"a") is not None, cache.get(b"b"), cache.get(b"c") is not None) == (
        True,
        None,
        True,
    )


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    from tests.late_checkpoints import _wordpiece

    return _wordpiece(tmp_path_factory.mktemp("wordpiece"))


def _parameters(tokenizer: object, **changes: object) -> LateTokenizerParameters:
    punctuation = [tokenizer.convert_tokens_to_ids(p) for p in string.punctuation]  # type: ignore[attr-defined]
    values: dict[str, object] = {
        "query_length": 12,
        "document_length": 16,
        "max_chars": 1000,
        "query_prefix": "[unused0] ",
        "document_prefix": "[unused1] ",
        "expansion": QueryExpansion.FIXED,
        "expansion_length": 12,
        "expansion_token_id": tokenizer.mask_token_id,  # type: ignore[attr-defined]
        "skiplist_ids": tuple(i for i in punctuation if i != tokenizer.unk_token_id),  # type: ignore[attr-defined]
    }
    values.update(changes)
    return LateTokenizerParameters(**values)  # type: ignore[arg-type]


def _late(tokenizer: object, parameters: LateTokenizerParameters) -> LateTokenizer:
    backend = tokenizer.backend_tokenizer  # type: ignore[attr-defined]
    return LateTokenizer(Tokenizer.from_str(backend.to_str()), parameters)


def test_documents_are_tokenized_as_transformers_does_with_the_skiplist_unscored(
    hf_tokenizer: object,
) -> None:
    parameters = _parameters(hf_tokenizer)
    texts = ["Rivers, lakes; and seas!", "the " * 40]
    rows = _late(hf_tokenizer, parameters).documents(texts)
    expected = hf_tokenizer(  # type: ignore[operator]
        ["[unused1] " + t for t in texts], truncation=True, max_length=16, padding=True
    )
    assert rows["input_ids"].tolist() == expected["input_ids"]
    assert rows["attention_mask"].tolist() == expected["attention_mask"]
    tokens = [hf_tokenizer.convert_ids_to_tokens(row) for row in expected["input_ids"]]  # type: ignore[attr-defined]
    punctuation = np.array([[t in string.punctuation for t in row] for row in tokens])
    assert punctuation[0].sum() >= 3  # , ; !
    assert (rows["document_scored_mask"] == rows["attention_mask"] * ~punctuation).all()


def test_a_fixed_expansion_pads_queries_with_mask_tokens_it_scores_but_does_not_attend(
    hf_tokenizer: object,
) -> None:
    rows, tokens = _late(hf_tokenizer, _parameters(hf_tokenizer)).queries(["where is it?"])
    ids = hf_tokenizer("[unused0] where is it?")["input_ids"]  # type: ignore[operator]
    mask = hf_tokenizer.mask_token_id  # type: ignore[attr-defined]
    assert rows["query_input_ids"][0].tolist() == ids + [mask] * (12 - len(ids))
    assert rows["query_attention_mask"][0].tolist() == [1] * len(ids) + [0] * (12 - len(ids))
    assert rows["query_scored_mask"][0].tolist() == [1] * 12
    assert tokens.tolist() == [len(ids)]


def test_min_expansion_keeps_a_long_query_whole_and_refusal_names_the_query(
    hf_tokenizer: object,
) -> None:
    parameters = _parameters(
        hf_tokenizer,
        query_length=16,
        expansion=QueryExpansion.MIN,
        expansion_length=10,
        attend_to_expansion=True,
    )
    late = _late(hf_tokenizer, parameters)
    texts = ["a b", "one two three four five"]
    rows, _ = late.queries(texts)
    short, long = (len(hf_tokenizer("[unused0] " + t)["input_ids"]) for t in texts)  # type: ignore[operator]
    assert short < 10 < long <= 16
    assert rows["query_input_ids"].shape[1] == long
    assert rows["query_scored_mask"].sum(axis=1).tolist() == [10, long]
    assert rows["query_attention_mask"].sum(axis=1).tolist() == [10, long]
    with pytest.raises(Overflow) as refused:
        late.queries(["word " * 20], TruncationOptions(refuse=True))
    assert (refused.value.report.part, refused.value.report.limit) == (QUERY_PART, 16)


def test_each_distinct_row_is_encoded_once_and_cached_vectors_are_reused() -> None:
    runs: list[int] = []

    def run(ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        runs.append(len(ids))
        return np.repeat(ids[:, :, None].astype(np.float32), 4, axis=2) / 100

    cache = VectorCache(1 << 20)
    scorer = LateScorer(run, 1 << 22, 16, RunCost(), document_cache=cache)
    query = {
        "query_input_ids": np.array([[5, 6, 7]] * 3),
        "query_attention_mask": np.array([[1, 1, 1]] * 3),
        "query_scored_mask": np.array([[1, 1, 1]] * 3),
    }
    request = {
        **query,
        "input_ids": np.array([[1, 2, 0], [1, 2, 0], [3, 4, 9]]),
        "attention_mask": np.array([[1, 1, 0], [1, 1, 0], [1, 1, 1]]),
        "document_scored_mask": np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1]]),
    }
    scores, counts = scorer.score([request])
    assert counts == [3] and scores[0] == scores[1]
    assert sum(runs) == 3  # one query, two distinct documents
    assert (scorer.counts.hits, scorer.counts.misses) == (0, 3)
    again, _ = scorer.score([request])
    assert np.array_equal(again, scores)
    assert sum(runs) == 4 and (scorer.counts.hits, scorer.counts.misses) == (3, 3)


def test_wordpiece_fixture_keeps_markers_out_of_specials(tmp_path: Path) -> None:
    from tests.late_checkpoints import _wordpiece

    tokenizer = _wordpiece(tmp_path)
    assert tokenizer.convert_tokens_to_ids("[unused0]") != tokenizer.unk_token_id
