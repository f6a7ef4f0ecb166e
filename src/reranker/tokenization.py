"""Pair tokenization for the tokenizer model, as sentence-transformers does it.

Cross-encoders read ``[CLS] query [SEP] document [SEP]`` truncated longest-first to the
model's max length (``CrossEncoder`` tokenizes with ``truncation="longest_first"``).
Bi-encoder pair scorers read query and document as two independent sequences, each
truncated on its own, placed side by side (``SentenceTransformer.encode`` of each text).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from tokenizers import Tokenizer

# Tensor names the encoders read; a model uses the subset its graph has.
TOKEN_TENSORS = ("input_ids", "attention_mask", "token_type_ids")


class PairMode(StrEnum):
    JOINT = "joint"
    SEPARATE = "separate"


@dataclass(frozen=True)
class PairTokenizerConfig:
    max_length: int
    pair_mode: PairMode
    # Characters kept of each text before tokenizing: the fast tokenizer processes a whole
    # text before truncating, so an enormous document would stall the instance.
    max_chars: int
    # Lengths rows are padded up to (ascending); empty pads to the longest row only.
    length_buckets: tuple[int, ...] = ()


@dataclass(frozen=True)
class TokenizedRow:
    ids: list[int]
    type_ids: list[int]


def parse_buckets(text: str) -> tuple[int, ...]:
    """Parses a comma-separated list of lengths such as ``"64,128,256,512"``."""
    buckets = tuple(sorted(int(part) for part in text.split(",") if part.strip()))
    if any(b < 1 for b in buckets):
        raise ValueError(f"length buckets must be positive, got {text!r}")
    return buckets


def padded_length(longest: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``longest`` tokens; ``longest`` itself past the last."""
    position = bisect.bisect_left(buckets, longest)
    return buckets[position] if position < len(buckets) else longest


class PairTokenizer:
    """Turns (query, document) rows into model inputs."""

    def __init__(self, tokenizer: Tokenizer, config: PairTokenizerConfig) -> None:
        self._config = config
        self.pad_id = _pad_token_id(tokenizer)
        self._tokenizer = tokenizer
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(config.max_length, strategy="longest_first")

    @classmethod
    def from_file(cls, path: str, config: PairTokenizerConfig) -> PairTokenizer:
        return cls(Tokenizer.from_file(path), config)

    def tokenize(self, queries: Sequence[str], documents: Sequence[str]) -> list[TokenizedRow]:
        """Tokenizes rows; ``queries[i]`` pairs with ``documents[i]``."""
        limit = self._config.max_chars
        clipped_queries = [q[:limit] for q in queries]
        clipped_documents = [d[:limit] for d in documents]
        if self._config.pair_mode is PairMode.JOINT:
            encodings = self._tokenizer.encode_batch(
                list(zip(clipped_queries, clipped_documents, strict=True))
            )
            return [TokenizedRow(e.ids, e.type_ids) for e in encodings]
        unique_queries = list(dict.fromkeys(clipped_queries))
        query_encodings = self._tokenizer.encode_batch(unique_queries)
        query_ids = {q: e.ids for q, e in zip(unique_queries, query_encodings, strict=True)}
        document_encodings = self._tokenizer.encode_batch(clipped_documents)
        rows = []
        for query, document in zip(clipped_queries, document_encodings, strict=True):
            ids = query_ids[query]
            rows.append(TokenizedRow(ids + document.ids, [0] * len(ids) + [1] * len(document.ids)))
        return rows

    def pad(self, rows: Sequence[TokenizedRow]) -> dict[str, np.ndarray]:
        """Pads rows to one bucket length: ``input_ids``, ``attention_mask``, ``token_type_ids``."""
        longest = max(len(row.ids) for row in rows)
        length = padded_length(longest, self._config.length_buckets)
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), length), dtype=np.int64)
        token_type_ids = np.zeros((len(rows), length), dtype=np.int64)
        for r, row in enumerate(rows):
            n = len(row.ids)
            input_ids[r, :n] = row.ids
            attention_mask[r, :n] = 1
            token_type_ids[r, :n] = row.type_ids
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }


def _pad_token_id(tokenizer: Tokenizer) -> int:
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
