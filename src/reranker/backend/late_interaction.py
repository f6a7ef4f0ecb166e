"""Late interaction (ColBERT), as sentence-transformers' ``MultiVectorEncoder`` does it.

The tokenizer model reads a row's query and document apart: each text after its prefix
(``[Q] ``/``[D] ``, or ``[unused0] ``/``[unused1] ``), cut to its own length; a query is
widened with the expansion token up to its width (``query_expansion``), and a document's
skiplist tokens (punctuation) are left out of what MaxSim scores (``MultiVectorMask``).

The encoder model runs the graph (backbone, projection, normalization) on each distinct query
once and on each distinct document once (a document seen before comes from the bounded cache
when it is on), and scores each row by MaxSim: for every scored query token, its best dot
product with a scored document token, summed (or averaged: "meanmaxsim").
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer, models

from reranker.backend.batching import RunCost, micro_batches
from reranker.backend.tokenization import Overflow, pad_token_id, padded_length
from reranker.contract.parameters import LateTokenizerParameters, QueryExpansion
from reranker.contract.tensors import (
    DOCUMENT_PART,
    DOCUMENT_SCORED_MASK,
    LONGEST_FIRST,
    QUERY_ATTENTION_MASK,
    QUERY_INPUT_IDS,
    QUERY_PART,
    QUERY_SCORED_MASK,
    TruncationOptions,
)

# What MaxSim gives a document with no scored token, as sentence-transformers does: below
# every real document.
EMPTY_DOCUMENT_SCORE = -1e9


@dataclass(frozen=True)
class _Finisher:
    """Cuts an encoding to a length and adds the special tokens, reading no vocabulary."""

    tokenizer: Tokenizer
    specials: int

    @classmethod
    def of(cls, source: Tokenizer, max_length: int) -> _Finisher:
        finisher = Tokenizer(models.WordLevel())
        if source.post_processor is not None:
            finisher.post_processor = source.post_processor
        finisher.enable_truncation(max_length)
        return cls(finisher, source.num_special_tokens_to_add(is_pair=False))


class LateTokenizer:
    """Query and document rows into the tensors the late-interaction encoder reads."""

    def __init__(self, tokenizer: Tokenizer, parameters: LateTokenizerParameters) -> None:
        """Takes ``tokenizer`` over: its padding and truncation are turned off."""
        self._parameters = parameters
        self._encoder = tokenizer
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.pad_id = pad_token_id(tokenizer)
        self._query = _Finisher.of(tokenizer, parameters.query_length)
        self._document = _Finisher.of(tokenizer, parameters.document_length)
        self._skiplist = np.asarray(parameters.skiplist_ids, dtype=np.int64)

    @classmethod
    def from_file(cls, path: str, parameters: LateTokenizerParameters) -> LateTokenizer:
        return cls(Tokenizer.from_file(path), parameters)

    def _encode(self, prefix: str, texts: Sequence[str]) -> list[Encoding]:
        limit = self._parameters.max_chars
        return self._encoder.encode_batch(
            [prefix + text[:limit] for text in texts], add_special_tokens=False
        )

    def documents(
        self, texts: Sequence[str], options: TruncationOptions = LONGEST_FIRST
    ) -> dict[str, np.ndarray]:
        """``input_ids``, ``attention_mask`` and the scored positions of each document.

        Raises:
            Overflow: a document does not fit and ``options.refuse`` is set.
        """
        p, finisher = self._parameters, self._document
        if not texts:
            raise ValueError("a request holds no rows")
        limit = p.document_length
        rows = []
        for row, encoding in enumerate(self._encode(p.document_prefix, texts)):
            if options.max_document_tokens:
                start = _text_start(encoding, len(self._parameters.document_prefix))
                encoding.truncate(start + options.max_document_tokens)
            length = len(encoding) + finisher.specials
            if options.refuse and length > limit:
                clipped = len(texts[row]) > p.max_chars
                raise Overflow(row, length, limit, clipped, DOCUMENT_PART)
            rows.append(finisher.tokenizer.post_process(encoding).ids)
        width = padded_length(max(map(len, rows)), p.length_buckets)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        for r, row_ids in enumerate(rows):
            ids[r, : len(row_ids)] = row_ids
            attention[r, : len(row_ids)] = 1
        scored = self._without_skiplist(ids, attention) if p.skiplist_documents else attention
        return {"input_ids": ids, "attention_mask": attention, DOCUMENT_SCORED_MASK: scored}

    def queries(
        self, texts: Sequence[str], options: TruncationOptions = LONGEST_FIRST
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each query's ids widened by its expansion, the positions the encoder attends to,
        and those MaxSim scores; and each query's own token count (its expansion not counted).

        Raises:
            Overflow: a query does not fit and ``options.refuse`` is set.
        """
        p, finisher = self._parameters, self._query
        if not texts:
            raise ValueError("a request holds no rows")
        rows = []
        for row, encoding in enumerate(self._encode(p.query_prefix, texts)):
            length = len(encoding) + finisher.specials
            if options.refuse and length > p.query_length:
                clipped = len(texts[row]) > p.max_chars
                raise Overflow(row, length, p.query_length, clipped, QUERY_PART)
            rows.append(finisher.tokenizer.post_process(encoding).ids)
        floor = p.expansion_length if p.expansion is not QueryExpansion.NONE else 0
        width = max(floor, *map(len, rows))
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention = np.zeros((len(rows), width), dtype=np.int64)
        scored = np.zeros((len(rows), width), dtype=np.int64)
        for r, row_ids in enumerate(rows):
            n = len(row_ids)
            ids[r, :n] = row_ids
            attention[r, :n] = 1
            scored[r, :n] = 1
            if n < floor:
                ids[r, n:floor] = p.expansion_token_id
                scored[r, n:floor] = 1
                attention[r, n:floor] = int(p.attend_to_expansion)
        if p.skiplist_queries:
            scored = self._without_skiplist(ids, scored)
        tensors = {QUERY_INPUT_IDS: ids, QUERY_ATTENTION_MASK: attention, QUERY_SCORED_MASK: scored}
        return tensors, np.array([len(row_ids) for row_ids in rows], dtype=np.int64)

    def _without_skiplist(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``mask`` less the positions of skiplist tokens."""
        if not self._skiplist.size:
            return mask.copy()
        return mask * ~np.isin(ids, self._skiplist)


def _text_start(encoding: Encoding, prefix_chars: int) -> int:
    """The first token of ``encoding`` that holds a character of the text after its prefix
    (a byte-level BPE joins the prefix's last space to the text's first word)."""
    for index, (_, end) in enumerate(encoding.offsets):
        if end > prefix_chars:
            return index
    return len(encoding)


def maxsim(query: np.ndarray, document: np.ndarray, mean: bool = False) -> float:
    """MaxSim of a query's scored token vectors ``[q, dim]`` against a document's
    ``[d, dim]``: each query token's best dot product, summed (``mean``: over ``q``). A
    document with no vector scores ``EMPTY_DOCUMENT_SCORE`` before that division, as in
    sentence-transformers."""
    total = EMPTY_DOCUMENT_SCORE
    if len(document):
        total = float((query @ document.T).max(axis=1).astype(np.float64).sum())
    return total / max(len(query), 1) if mean else total


class VectorCache:
    """Token vectors by key, least recently used out first, within ``capacity_bytes``
    (the vectors' bytes and a fixed allowance an entry for its key and bookkeeping)."""

    # An entry's array header and ordered-dict slot (measured with tracemalloc: about 213
    # bytes) and its 16-byte key (49 bytes as a Python object).
    ENTRY_OVERHEAD_BYTES = 300

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.held_bytes = 0
        self._entries: OrderedDict[bytes, np.ndarray] = OrderedDict()

    def get(self, key: bytes) -> np.ndarray | None:
        vectors = self._entries.get(key)
        if vectors is not None:
            self._entries.move_to_end(key)
        return vectors

    def put(self, key: bytes, vectors: np.ndarray) -> None:
        size = vectors.nbytes + self.ENTRY_OVERHEAD_BYTES
        if key in self._entries or size > self.capacity_bytes:
            return
        while self.held_bytes + size > self.capacity_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.held_bytes -= evicted.nbytes + self.ENTRY_OVERHEAD_BYTES
        self._entries[key] = vectors
        self.held_bytes += size


def row_key(*parts: np.ndarray) -> bytes:
    """A digest of a row's tensors: the same row, the same key."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.digest()


# Runs the graph on padded ``input_ids`` and ``attention_mask``: token vectors [rows, length, dim].
VectorRun = Callable[[np.ndarray, np.ndarray], np.ndarray]


class OnnxTokenVectors:
    """The graph under ONNX Runtime: padded ids and attention in, token vectors out."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._output = session.get_outputs()[0].name

    def __call__(self, ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": attention}
        (vectors,) = self._session.run([self._output], feeds)
        return np.asarray(vectors, dtype=np.float32)


@dataclass
class CacheCounts:
    hits: int = 0
    misses: int = 0


class LateScorer:
    """Scores merged late-interaction rows: queries and documents each encoded once."""

    def __init__(
        self,
        run: VectorRun,
        max_cells: int,
        max_rows: int,
        cost: RunCost,
        mean: bool = False,
        document_cache: VectorCache | None = None,
        query_cache: VectorCache | None = None,
        max_tokens: int = 0,
    ) -> None:
        self._run = run
        self._max_cells, self._max_rows, self._cost = max_cells, max_rows, cost
        self._max_tokens = max_tokens
        self._mean = mean
        self._document_cache = document_cache
        self._query_cache = query_cache
        self.counts = CacheCounts()

    def score(self, requests: Sequence[Mapping[str, np.ndarray]]) -> tuple[np.ndarray, list[int]]:
        """Every row's MaxSim, and the rows of each request."""
        query_rows = [_query_rows(request) for request in requests]
        document_rows = [_document_rows(request) for request in requests]
        queries = self._vectors(
            [row for rows in query_rows for row in rows], self._query_cache, counted=False
        )
        documents = self._vectors(
            [row for rows in document_rows for row in rows], self._document_cache, counted=True
        )
        scores = np.array(
            [maxsim(q, d, self._mean) for q, d in zip(queries, documents, strict=True)],
            dtype=np.float32,
        )
        return scores, [len(rows) for rows in document_rows]

    def _vectors(
        self, rows: Sequence[_Row], cache: VectorCache | None, counted: bool
    ) -> list[np.ndarray]:
        """Each row's scored token vectors: from the cache, or encoded once per distinct row."""
        found: dict[bytes, np.ndarray] = {}
        missing: dict[bytes, _Row] = {}
        for row in rows:
            if row.key in found or row.key in missing:
                continue
            cached = cache.get(row.key) if cache is not None else None
            if cached is not None:
                found[row.key] = cached
            else:
                missing[row.key] = row
        hits = sum(1 for row in rows if row.key in found)
        encoded = self._encode(list(missing.values()))
        if counted and cache is not None:
            # Every row counts: a document repeated within an execution is one miss a row,
            # though it is encoded once.
            self.counts.hits += hits
            self.counts.misses += len(rows) - hits
        for key, vectors in encoded.items():
            found[key] = vectors
            if cache is not None:
                cache.put(key, vectors)
        return [found[row.key] for row in rows]

    def _encode(self, rows: list[_Row]) -> dict[bytes, np.ndarray]:
        lengths = [len(row.ids) for row in rows]
        encoded: dict[bytes, np.ndarray] = {}
        plan = micro_batches(lengths, self._max_cells, self._max_rows, self._cost, self._max_tokens)
        for batch in plan:
            width = max(lengths[i] for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)
            attention = np.zeros((len(batch), width), dtype=np.int64)
            for r, index in enumerate(batch):
                row = rows[index]
                ids[r, : len(row.ids)] = row.ids
                attention[r, : len(row.ids)] = row.attention
            vectors = self._run(ids, attention)
            for r, index in enumerate(batch):
                row = rows[index]
                scored = vectors[r, : len(row.ids)][row.scored.astype(bool)]
                encoded[row.key] = np.ascontiguousarray(scored, dtype=np.float32)
        return encoded


@dataclass(frozen=True)
class _Row:
    """One query or document: its ids, attention and scored positions, trimmed."""

    ids: np.ndarray
    attention: np.ndarray
    scored: np.ndarray
    key: bytes


def _trimmed(ids: np.ndarray, attention: np.ndarray, scored: np.ndarray) -> _Row:
    used = np.flatnonzero(attention | scored)
    end = int(used[-1]) + 1 if used.size else 1
    ids, attention, scored = ids[:end], attention[:end], scored[:end]
    return _Row(ids, attention, scored, row_key(ids, attention, scored))


def _query_rows(request: Mapping[str, np.ndarray]) -> list[_Row]:
    return [
        _trimmed(*parts)
        for parts in zip(
            request[QUERY_INPUT_IDS],
            request[QUERY_ATTENTION_MASK],
            request[QUERY_SCORED_MASK],
            strict=True,
        )
    ]


def _document_rows(request: Mapping[str, np.ndarray]) -> list[_Row]:
    return [
        _trimmed(*parts)
        for parts in zip(
            request["input_ids"],
            request["attention_mask"],
            request[DOCUMENT_SCORED_MASK],
            strict=True,
        )
    ]
