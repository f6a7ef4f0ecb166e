"""A causal-LM reranker's rows begin with one prompt (system text, instruction, query): the
PyTorch runtime runs that prefix once and each row's rest against its keys and values. The
scores are the same as running every row whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reranker.backend.tokenization import PairTokenizer, PairTokenizerConfig, PromptTemplate
from reranker.backend.torch_runtime import MIN_SHARED_PREFIX, TorchRunner
from reranker.build.builder import BuildOptions, build
from reranker.contract.model import EncoderRuntime, PairMode
from reranker.contract.tensors import TruncationOptions
from tests.checkpoints import qwen3_reranker
from tests.texts import varied_pairs

PAIRS = varied_pairs(16)

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[TorchRunner, PairTokenizer]:
    root = tmp_path_factory.mktemp("prefix")
    source = qwen3_reranker(root / "qwen3", layers=2)
    model = build(str(source), BuildOptions(name="q", runtime=EncoderRuntime.TORCH), root / "r")
    version = root / "r" / "q__tokenizer" / "1"
    prompt = PromptTemplate.from_json(json.loads((version / "prompt.json").read_text()))
    config = PairTokenizerConfig(model.max_length, PairMode.PROMPT, 1 << 16, prompt=prompt)
    tokenizer = PairTokenizer.from_file(str(version / "tokenizer.json"), config)
    runner = TorchRunner(
        root / "r" / "q__encoder" / "1" / "checkpoint",
        bi_encoder=False,
        input_names=["input_ids", "attention_mask"],
        relevance=model.relevance_tokens,
    )
    return runner, tokenizer


def _whole(runner: TorchRunner, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Every row run whole: the path without prefix sharing."""
    return np.concatenate(
        [
            runner.run({name: values[i : i + 1] for name, values in feeds.items()})
            for i in range(len(feeds["input_ids"]))
        ]
    )


@pytest.mark.parametrize("instruction", [None, INSTRUCTION])
def test_rows_of_one_call_share_the_prompt_and_score_as_whole_rows(
    served: tuple[TorchRunner, PairTokenizer], instruction: str | None
) -> None:
    runner, tokenizer = served
    query = PAIRS[0][0]
    documents = [d for _, d in PAIRS[:12]]
    options = TruncationOptions(instruction=instruction)
    padded = tokenizer.pad(tokenizer.tokenize([query] * len(documents), documents, options))
    feeds = {name: padded[name] for name in ("input_ids", "attention_mask")}
    assert runner._shared_prefix(feeds) >= MIN_SHARED_PREFIX
    assert np.abs(runner.run(feeds) - _whole(runner, feeds)).max() <= 1e-5


def test_rows_of_two_calls_share_what_they_have_in_common_and_stay_exact(
    served: tuple[TorchRunner, PairTokenizer],
) -> None:
    runner, tokenizer = served
    pairs = PAIRS[:10]
    queries = ["what is a reranker"] * 5 + ["how long is the river nile"] * 5
    padded = tokenizer.pad(tokenizer.tokenize(queries, [d for _, d in pairs]))
    feeds = {name: padded[name] for name in ("input_ids", "attention_mask")}
    alone = runner._shared_prefix({k: v[:5] for k, v in feeds.items()})
    assert 0 <= runner._shared_prefix(feeds) < alone
    assert np.abs(runner.run(feeds) - _whole(runner, feeds)).max() <= 1e-5
