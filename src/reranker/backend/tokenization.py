"""Pair tokenization for the tokenizer model, as sentence-transformers does it.

Cross-encoders read ``[CLS] query [SEP] document [SEP]`` truncated longest-first to the
model's max length (``CrossEncoder`` tokenizes with ``truncation="longest_first"``).
Bi-encoder pair scorers read query and document as two independent sequences, each
truncated on its own, placed side by side (``SentenceTransformer.encode`` of each text).
Causal-LM rerankers read the pair inside their prompt (the chat template, rendered around
the instruction, query and document), tokenized whole and cut at the max length, with the
template's closing tokens written back over the end of a cut row, as ``CrossEncoder`` does.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Encoding, Tokenizer, models

from reranker.contract.model import PairMode
from reranker.contract.tensors import LONGEST_FIRST, PAIR, OverflowReport, TruncationOptions


@dataclass(frozen=True)
class PromptLayout:
    """One way a causal-LM reranker's template renders a pair: the fixed texts around its
    slots (``texts[i]`` precedes ``slots[i]``; the last text closes the prompt), and the
    token ids that close it, which a row cut at the max length gets back at its end."""

    slots: tuple[str, ...]
    texts: tuple[str, ...]
    suffix_ids: tuple[int, ...]

    def render(self, values: dict[str, str]) -> str:
        parts = [text + values[slot] for text, slot in zip(self.texts, self.slots, strict=False)]
        return "".join(parts) + self.texts[-1]

    def to_json(self) -> dict[str, object]:
        return {
            "slots": list(self.slots),
            "texts": list(self.texts),
            "suffix_ids": list(self.suffix_ids),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PromptLayout:
        slots, texts, suffix = data["slots"], data["texts"], data["suffix_ids"]
        assert isinstance(slots, list) and isinstance(texts, list) and isinstance(suffix, list)
        return cls(tuple(map(str, slots)), tuple(map(str, texts)), tuple(map(int, suffix)))


@dataclass(frozen=True)
class PromptTemplate:
    """A causal-LM reranker's prompt: as rendered with the model's own default instruction
    (or none), and, where the template has a slot for it, with the caller's instruction."""

    default: PromptLayout
    instructed: PromptLayout | None = None

    @property
    def takes_instruction(self) -> bool:
        return self.instructed is not None

    def to_json(self) -> dict[str, object]:
        return {
            "default": self.default.to_json(),
            "instructed": self.instructed.to_json() if self.instructed else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PromptTemplate:
        default, instructed = data["default"], data.get("instructed")
        assert isinstance(default, dict)
        return cls(
            PromptLayout.from_json(default),
            PromptLayout.from_json(instructed) if isinstance(instructed, dict) else None,
        )


@dataclass(frozen=True)
class PairTokenizerConfig:
    max_length: int
    pair_mode: PairMode
    # Characters kept of each text before tokenizing: the fast tokenizer processes a whole
    # text before truncating, so an enormous document would stall the instance.
    max_chars: int
    # Lengths rows are padded up to (ascending); empty pads to the longest row only.
    length_buckets: tuple[int, ...] = ()
    # The prompt of a causal-LM reranker (pair mode PROMPT).
    prompt: PromptTemplate | None = None


@dataclass(frozen=True)
class TokenizedRow:
    ids: list[int]
    type_ids: list[int]


def padded_length(longest: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds ``longest`` tokens; ``longest`` itself past the last."""
    position = bisect.bisect_left(buckets, longest)
    return buckets[position] if position < len(buckets) else longest


class Overflow(ValueError):
    """A row is longer than the model reads and the request refused truncation. Its message is
    the structured :class:`~reranker.contract.tensors.OverflowReport` the service decodes."""

    def __init__(self, row: int, tokens: int, limit: int, clipped: bool, part: str = PAIR) -> None:
        self.report = OverflowReport(row, tokens, limit, clipped, part)
        super().__init__(self.report.encode())


class PairTokenizer:
    """Turns (query, document) rows into model inputs.

    Each text is encoded alone, untruncated; then the pair is truncated and given its
    special tokens by the tokenizer's own post-processing, which is what encoding the pair
    in one call does. Encoding apart yields every row's full length for free, and lets the
    document be capped before the pair is truncated.
    """

    def __init__(self, tokenizer: Tokenizer, config: PairTokenizerConfig) -> None:
        """Takes ``tokenizer`` over: its padding and truncation are turned off."""
        self._config = config
        self.pad_id = pad_token_id(tokenizer)
        self._encoder = tokenizer
        self._encoder.no_padding()
        self._encoder.no_truncation()
        # Truncating a pair and adding its special tokens reads no vocabulary: the finisher
        # holds only the post-processor, not a second copy of the vocabulary (megabytes per
        # served model, in every tokenizer process).
        self._finisher = Tokenizer(models.WordLevel())
        if tokenizer.post_processor is not None:
            self._finisher.post_processor = tokenizer.post_processor
        self._finisher.enable_truncation(config.max_length, strategy="longest_first")
        self._pair_specials = self._encoder.num_special_tokens_to_add(is_pair=True)
        self._single_specials = self._encoder.num_special_tokens_to_add(is_pair=False)

    @classmethod
    def from_file(cls, path: str, config: PairTokenizerConfig) -> PairTokenizer:
        return cls(Tokenizer.from_file(path), config)

    def special_tokens(self, pair: bool) -> int:
        """Special tokens added to a pair (or to a single text)."""
        return self._pair_specials if pair else self._single_specials

    def encode_texts(self, texts: Sequence[str]) -> list[Encoding]:
        """Encodes texts alone, untruncated and without special tokens (after clipping)."""
        limit = self._config.max_chars
        return self._encoder.encode_batch([t[:limit] for t in texts], add_special_tokens=False)

    def tokenize(
        self,
        queries: Sequence[str],
        documents: Sequence[str],
        options: TruncationOptions = LONGEST_FIRST,
    ) -> list[TokenizedRow]:
        """Tokenizes rows; ``queries[i]`` pairs with ``documents[i]``.

        Raises:
            Overflow: a row does not fit and ``options.refuse`` is set.
        """
        if self._config.pair_mode is PairMode.PROMPT:
            return self._tokenize_prompts(queries, documents, options)
        unique_queries = list(dict.fromkeys(queries))
        encoded = dict(zip(unique_queries, self.encode_texts(unique_queries), strict=True))
        limit = self._config.max_length
        rows = []
        for row, (query, document) in enumerate(
            zip(queries, self.encode_texts(documents), strict=True)
        ):
            if options.max_document_tokens:
                document.truncate(options.max_document_tokens)
            question = encoded[query]
            clipped = max(len(query), len(documents[row])) > self._config.max_chars
            if self._config.pair_mode is PairMode.JOINT:
                length = len(question) + len(document) + self._pair_specials
                if options.refuse and length > limit:
                    raise Overflow(row, length, limit, clipped)
                pair = self._finisher.post_process(question, document)
                rows.append(TokenizedRow(pair.ids, pair.type_ids))
            else:
                length = max(len(question), len(document)) + self._single_specials
                if options.refuse and length > limit:
                    raise Overflow(row, length, limit, clipped)
                first = self._finisher.post_process(question).ids
                second = self._finisher.post_process(document).ids
                rows.append(TokenizedRow(first + second, [0] * len(first) + [1] * len(second)))
        return rows

    def _tokenize_prompts(
        self, queries: Sequence[str], documents: Sequence[str], options: TruncationOptions
    ) -> list[TokenizedRow]:
        """Each pair rendered into the prompt and tokenized whole. A row longer than the max
        length keeps its first tokens with the prompt's closing tokens written back over its
        end (the document's tail is what goes), as ``CrossEncoder`` truncates a chat prompt."""
        prompt = self._config.prompt
        assert prompt is not None
        layout = prompt.default
        if options.instruction is not None:
            if prompt.instructed is None:
                raise ValueError("instruction: this model's prompt takes none")
            layout = prompt.instructed
        limit, chars = self._config.max_length, self._config.max_chars
        texts = [d[:chars] for d in documents]
        if options.max_document_tokens:
            for row, encoding in enumerate(self.encode_texts(texts)):
                if len(encoding) > options.max_document_tokens:
                    texts[row] = texts[row][: encoding.offsets[options.max_document_tokens - 1][1]]
        rendered = [
            layout.render(
                {"instruction": options.instruction or "", "query": q[:chars], "document": d}
            )
            for q, d in zip(queries, texts, strict=True)
        ]
        suffix = list(layout.suffix_ids)
        rows = []
        for row, encoding in enumerate(
            self._encoder.encode_batch(rendered, add_special_tokens=False)
        ):
            ids = encoding.ids
            if len(ids) > limit:
                if options.refuse:
                    clipped = max(len(queries[row]), len(documents[row])) > chars
                    raise Overflow(row, len(ids), limit, clipped)
                ids = ids[:limit]
            if len(ids) >= limit and suffix:
                keep = min(len(suffix), limit)
                ids[limit - keep :] = suffix[-keep:]
            rows.append(TokenizedRow(ids, [0] * len(ids)))
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


def pad_token_id(tokenizer: Tokenizer) -> int:
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0
