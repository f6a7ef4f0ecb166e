"""A causal-LM reranker's rows begin with one prompt (system text, instruction, query): the
PyTorch runtime runs that prefix once and each row's rest against its keys and values. The
scores are the same as running every row whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reranker.backend.prefix import MIN_SHARED_PREFIX, SharedPrefixGraph
from reranker.backend.runtimes import OnnxRuntimeRunner
from reranker.backend.tokenization import PairTokenizer, PairTokenizerConfig, PromptTemplate
from reranker.backend.torch_runtime import TorchRunner
from reranker.builder.builder import BuildOptions, build
from reranker.contract.model import PairMode, Runtime
from reranker.contract.tensors import TruncationOptions
from tests.checkpoints import qwen3_reranker
from tests.texts import varied_pairs

PAIRS = varied_pairs(16)

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return qwen3_reranker(tmp_path_factory.mktemp("prefix") / "qwen3", layers=2)


@pytest.fixture(scope="module")
def graph(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> SharedPrefixGraph:
    """The ONNX graph the builder exports for CPU, run as the encoder runs it."""
    root = tmp_path_factory.mktemp("graph")
    build(str(checkpoint), BuildOptions(name="g"), root)
    return SharedPrefixGraph(OnnxRuntimeRunner(root / "g__encoder" / "1" / "model.onnx", 0))


@pytest.fixture(scope="module")
def served(
    checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[TorchRunner, PairTokenizer]:
    root = tmp_path_factory.mktemp("served")
    model = build(str(checkpoint), BuildOptions(name="q", runtime=Runtime.TORCH), root / "r")
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
    [group] = runner._prefix_groups(feeds)
    rows, prefix = group.rows, group.prefix
    assert rows.tolist() == list(range(len(documents))) and prefix >= MIN_SHARED_PREFIX
    assert np.abs(runner.run(feeds) - _whole(runner, feeds)).max() <= 1e-5


def _leading_tokens_in_common(first: list[int], second: list[int]) -> int:
    count = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        count += 1
    return count


def test_calls_that_meet_in_one_batch_share_the_system_prompt_and_stay_exact(
    served: tuple[TorchRunner, PairTokenizer],
) -> None:
    """Two calls' rows interleaved in one batch: the template's system text, which every
    call begins with, runs once for all of them; every score stays in place."""
    runner, tokenizer = served
    documents = [d for _, d in PAIRS[:10]]
    queries = ["what is a reranker", "how long is the river nile"] * 5
    padded = tokenizer.pad(tokenizer.tokenize(queries, documents))
    feeds = {name: padded[name] for name in ("input_ids", "attention_mask")}
    rows = [
        ids[mask > 0].tolist()
        for ids, mask in zip(feeds["input_ids"], feeds["attention_mask"], strict=True)
    ]
    [group] = runner._prefix_groups(feeds)
    assert group.rows.tolist() == list(range(10))
    assert group.prefix == _leading_tokens_in_common(rows[0], rows[1]) >= MIN_SHARED_PREFIX
    assert np.abs(runner.run(feeds) - _whole(runner, feeds)).max() <= 1e-5


def _batch(prompts: list[int], calls: list[int], rests: list[int]) -> dict[str, np.ndarray]:
    """Right-padded rows of random tokens: prompt ``calls[i]`` (of ``prompts`` lengths), then
    ``rests[i]`` tokens of the row's own."""
    generator = np.random.default_rng(0)
    starts = [generator.integers(10, 500, size=n) for n in prompts]
    rows = [
        np.concatenate([starts[call], generator.integers(10, 500, size=rest)])
        for call, rest in zip(calls, rests, strict=True)
    ]
    width = max(len(row) for row in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


# Three prompts with nothing in common (as a template-less causal LM's, which begin with
# the query), the third with one row.
PROMPTS = [24, 40, 30]
CALLS = [0, 1, 0, 1, 0, 2, 1]
RESTS = [5, 9, 13, 2, 20, 7, 11]


def test_rows_group_by_the_prompt_they_begin_with_and_a_lone_row_runs_whole(
    served: tuple[TorchRunner, PairTokenizer],
) -> None:
    runner, _ = served
    feeds = _batch(PROMPTS, CALLS, RESTS)
    groups = {tuple(g.rows.tolist()): g.prefix for g in runner._prefix_groups(feeds)}
    assert groups == {(0, 2, 4): 24, (1, 3, 6): 40, (5,): 0}
    assert np.abs(runner.run(feeds) - _whole(runner, feeds)).max() <= 1e-5


@pytest.mark.parametrize(
    ("prompts", "calls", "rests"),
    [
        (PROMPTS, CALLS, RESTS),
        # Short prompts (a 5-token query) shared by nobody past them: every row runs whole,
        # in one pass, each row its own prefix, shorter rows ending inside theirs.
        ([5, 3, 6], [0, 1, 2, 0, 1], [40, 7, 1, 12, 30]),
        # Rows of one token after a one-token prompt: the pass pads a column.
        ([1], [0, 0], [0, 0]),
    ],
)
def test_the_exported_graph_scores_groups_and_whole_rows_as_the_checkpoint_does(
    served: tuple[TorchRunner, PairTokenizer],
    graph: SharedPrefixGraph,
    prompts: list[int],
    calls: list[int],
    rests: list[int],
) -> None:
    runner, _ = served
    feeds = _batch(prompts, calls, rests)
    assert np.abs(graph.run(feeds) - _whole(runner, feeds)).max() <= 1e-5
