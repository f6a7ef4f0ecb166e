"""What crosses the rank service -> Triton boundary on every request: tensor names, the
request parameters a call's options travel as, the character clip of texts, and the
structured overflow error. Both sides import it, so neither restates the other's names."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

# The ensemble's inputs (TYPE_STRING [1] per row) and output (FP32 [1] per row).
QUERY = "QUERY"
DOCUMENT = "DOCUMENT"
SCORE = "SCORE"
# The ensemble's count of the tokens the model read of each row (INT32 [1] per row: special
# tokens and any prompt included), made by its tokenizer model; for usage accounting.
TOKENS = "TOKENS"
# A vision-language reranker's ensemble also takes each row's query and document image, as
# the encoded file's bytes (TYPE_STRING [1] per row; empty: that side has no image). The
# images go before the text in their message.
QUERY_IMAGE = "QUERY_IMAGE"
DOCUMENT_IMAGE = "DOCUMENT_IMAGE"
IMAGE_INPUTS = (QUERY_IMAGE, DOCUMENT_IMAGE)
# Token tensors the encoders read; a model uses the subset its graph has.
TOKEN_TENSORS = ("input_ids", "attention_mask", "token_type_ids")
# A causal-LM graph's input of the prompt prefix: [1, prefix] when its rows share it, or
# [rows, prefix], each row's own; the rows' ``input_ids`` then hold what follows it, their
# ``attention_mask`` the whole rows.
PREFIX_IDS = "prefix_ids"
# What a vision-language reranker's tokenizer model hands its encoder, one row each:
# the token tensors (``mm_token_type_ids`` marks image tokens, for M-RoPE), each row's image
# grids (t, h, w per image, zero-padded) and its images' patches, flattened and zero-padded.
MM_TOKEN_TYPE_IDS = "mm_token_type_ids"
IMAGE_GRID_THW = "image_grid_thw"
PIXEL_VALUES = "pixel_values"
VISION_TOKEN_TENSORS = ("input_ids", "attention_mask", MM_TOKEN_TYPE_IDS, IMAGE_GRID_THW)
# What a late-interaction (ColBERT) reranker's tokenizer model hands its encoder, one row each:
# the document as the model reads it and the positions MaxSim scores (its skiplist removed),
# and the row's query, expanded to its width, with the positions the encoder attends to and
# those MaxSim scores (the expansion included).
DOCUMENT_SCORED_MASK = "document_scored_mask"
QUERY_INPUT_IDS = "query_input_ids"
QUERY_ATTENTION_MASK = "query_attention_mask"
QUERY_SCORED_MASK = "query_scored_mask"
LATE_DOCUMENT_TENSORS = ("input_ids", "attention_mask", DOCUMENT_SCORED_MASK)
LATE_QUERY_TENSORS = (QUERY_INPUT_IDS, QUERY_ATTENTION_MASK, QUERY_SCORED_MASK)
LATE_TOKEN_TENSORS = (*LATE_DOCUMENT_TENSORS, *LATE_QUERY_TENSORS)

# Request parameters a rank call's truncation options travel as.
_PARAM_MAX_DOCUMENT_TOKENS = "max_document_tokens"
_PARAM_TRUNCATION = "truncation"
# A causal-LM reranker's instruction, when the call gives one.
_PARAM_INSTRUCTION = "instruction"
_TRUNCATE_LONGEST_FIRST = "longest_first"
_TRUNCATE_REFUSE = "refuse"

# Characters of a text read per token the model reads: the fast tokenizer processes a whole
# text before truncating, so an enormous one would stall the instance; a few characters per
# token is plenty for any language.
CHARS_PER_TOKEN = 16


def max_chars(max_tokens: int) -> int:
    """Characters kept of a text that may fill ``max_tokens`` tokens."""
    return max_tokens * CHARS_PER_TOKEN


# What an overflow report says does not fit.
PAIR, QUERY_PART, DOCUMENT_PART = "pair", "query", "document"

# A refused overflow crosses Triton as error text: this prefix, then the fields as JSON.
_OVERFLOW_PREFIX = "reranker.overflow "


@dataclass(frozen=True)
class OverflowReport:
    """A row longer than the model reads in a request that refused truncation."""

    row: int
    tokens: int
    limit: int
    # True when the text was clipped before tokenizing: it has more than ``tokens`` tokens.
    clipped: bool
    # What does not fit: the pair (PAIR), or, for a model that reads them apart (late
    # interaction), the row's QUERY or its DOCUMENT.
    part: str = PAIR

    def encode(self) -> str:
        return _OVERFLOW_PREFIX + json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, message: str) -> OverflowReport | None:
        """The report inside a Triton error message, if the message carries one."""
        start = message.find(_OVERFLOW_PREFIX)
        if start < 0:
            return None
        try:
            fields, _ = json.JSONDecoder().raw_decode(message, start + len(_OVERFLOW_PREFIX))
            return cls(
                row=int(fields["row"]),
                tokens=int(fields["tokens"]),
                limit=int(fields["limit"]),
                clipped=bool(fields["clipped"]),
                part=str(fields.get("part", PAIR)),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(frozen=True)
class TruncationOptions:
    """Per-request truncation choices, sent as request parameters."""

    # Keep at most this many document tokens (0: only the model's max length applies).
    max_document_tokens: int = 0
    # Refuse a row that does not fit instead of truncating it.
    refuse: bool = False
    # A causal-LM reranker's instruction (None: the model's default).
    instruction: str | None = None

    @classmethod
    def from_parameters(cls, parameters: dict[str, object]) -> TruncationOptions:
        cap = parameters.get(_PARAM_MAX_DOCUMENT_TOKENS, 0)
        truncation = parameters.get(_PARAM_TRUNCATION, _TRUNCATE_LONGEST_FIRST)
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
            raise ValueError(f"max_document_tokens must be a non-negative integer, got {cap!r}")
        if truncation not in (_TRUNCATE_LONGEST_FIRST, _TRUNCATE_REFUSE):
            raise ValueError(f"truncation must be 'longest_first' or 'refuse', got {truncation!r}")
        instruction = parameters.get(_PARAM_INSTRUCTION)
        if instruction is not None and not isinstance(instruction, str):
            raise ValueError(f"instruction must be a string, got {instruction!r}")
        return cls(
            max_document_tokens=cap,
            refuse=truncation == _TRUNCATE_REFUSE,
            instruction=instruction,
        )

    def parameters(self) -> dict[str, int | str]:
        parameters: dict[str, int | str] = {
            _PARAM_MAX_DOCUMENT_TOKENS: self.max_document_tokens,
            _PARAM_TRUNCATION: _TRUNCATE_REFUSE if self.refuse else _TRUNCATE_LONGEST_FIRST,
        }
        if self.instruction is not None:
            parameters[_PARAM_INSTRUCTION] = self.instruction
        return parameters


LONGEST_FIRST = TruncationOptions()
