"""Long documents scored window by window: where the windows fall, and the best score.

Windows are token ranges of the document that start and end on word boundaries, so each
window's text tokenizes back into the same tokens when the model reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding

from reranker.backend.tokenization import PairMode, PairTokenizer, PairTokenizerConfig
from reranker.contract.model import ServedModel, tokenizer_path
from reranker.contract.tensors import max_chars
from reranker.service.errors import FailedPrecondition, InvalidArgument

# Fewer tokens than this per window leaves too little of a document to judge it by.
MIN_WINDOW = 16


@dataclass(frozen=True)
class Chunk:
    document: int
    text: str


def _starts_word(word_ids: Sequence[int | None], position: int) -> bool:
    return position == 0 or word_ids[position] != word_ids[position - 1]


def plan_windows(
    word_ids: Sequence[int | None], window: int, overlap: int, max_chunks: int
) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of at most ``window`` tokens covering the document,
    consecutive ranges sharing up to ``overlap`` tokens, at most ``max_chunks`` of them."""
    if window < 1 or not 0 <= overlap < window or max_chunks < 1:
        raise ValueError(f"bad window {window}, overlap {overlap} or max_chunks {max_chunks}")
    total = len(word_ids)
    windows: list[tuple[int, int]] = []
    start = 0
    while len(windows) < max_chunks:
        end = min(start + window, total)
        if end < total:
            boundary = end
            while boundary > start + 1 and not _starts_word(word_ids, boundary):
                boundary -= 1
            if boundary > start + 1 or _starts_word(word_ids, boundary):
                end = boundary  # else one word longer than a window: cut inside it
        windows.append((start, end))
        if end >= total:
            break
        next_start = max(end - overlap, start + 1)
        while next_start < end and not _starts_word(word_ids, next_start):
            next_start += 1
        start = next_start
    return windows


def document_chunks(
    document_index: int,
    text: str,
    encoding: Encoding,
    window: int,
    overlap: int,
    max_chunks: int,
) -> list[Chunk]:
    """The document's windows as texts (the whole document when it fits one window)."""
    if len(encoding.ids) <= window:
        return [Chunk(document_index, text)]
    offsets = encoding.offsets
    return [
        Chunk(document_index, text[offsets[start][0] : offsets[end - 1][1]])
        for start, end in plan_windows(encoding.word_ids, window, overlap, max_chunks)
    ]


def best_per_document(scores: np.ndarray, chunks: Sequence[Chunk], documents: int) -> np.ndarray:
    """Each document's highest chunk score."""
    best = np.full(documents, -np.inf, dtype=scores.dtype)
    np.maximum.at(best, np.array([c.document for c in chunks]), scores)
    return best


class DocumentChunker:
    """Splits documents into windows with each model's own tokenizer, read from the model
    repository (loaded on first use)."""

    def __init__(self, repository: Path, max_chunks: int) -> None:
        self._repository = repository
        self._max_chunks = max_chunks
        self._tokenizers: dict[str, PairTokenizer] = {}

    def _tokenizer(self, model: ServedModel) -> PairTokenizer:
        tokenizer = self._tokenizers.get(model.name)
        if tokenizer is None:
            path = tokenizer_path(model, self._repository)
            if not path.is_file():
                raise FailedPrecondition(
                    f"chunking needs {model.name}'s tokenizer, not found at {path}: "
                    "run the rank service with the model repository Triton serves"
                )
            # Chunked documents are read in full (up to max_chunks windows), not clipped
            # to one window's worth of characters.
            config = PairTokenizerConfig(
                model.max_length, model.pair_mode, max_chars(model.max_length) * self._max_chunks
            )
            tokenizer = self._tokenizers[model.name] = PairTokenizer.from_file(str(path), config)
        return tokenizer

    def chunks(
        self,
        model: ServedModel,
        query: str,
        documents: Sequence[str],
        overlap: int,
        max_chunks: int,
        max_document_tokens: int,
    ) -> list[Chunk]:
        tokenizer = self._tokenizer(model)
        joint = model.pair_mode is PairMode.JOINT
        (query_encoding,) = tokenizer.encode_texts([query])
        window = model.max_length - tokenizer.special_tokens(pair=joint)
        if joint:
            window -= len(query_encoding.ids)
        if max_document_tokens:
            window = min(window, max_document_tokens)
        if window < MIN_WINDOW:
            raise InvalidArgument(
                f"query is too long to chunk documents: it leaves {window} tokens per window"
            )
        if overlap >= window:
            raise InvalidArgument(
                f"chunking.overlap_tokens ({overlap}) must be smaller than the window "
                f"({window} tokens)"
            )
        chunks: list[Chunk] = []
        for index, (text, encoding) in enumerate(
            zip(documents, tokenizer.encode_texts(documents), strict=True)
        ):
            chunks.extend(document_chunks(index, text, encoding, window, overlap, max_chunks))
        return chunks
