"""The rank core with a fake scorer: validation, options, limits, assembly and the error table,
with no Triton."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any, cast

import grpc
import numpy as np
import pytest

from reranker.contract.model import Activation, ModelKind, ServedModel
from reranker.contract.tensors import TruncationOptions
from reranker.service import errors
from reranker.service.callers import Caller, calling_as
from reranker.service.calls import ChunkingRequest, RankCall, Truncation
from reranker.service.chunking import Chunk, DocumentChunker
from reranker.service.core import RankCore
from reranker.service.doors.http.cohere import CohereV1Request
from reranker.service.doors.http.nim import NimRequest
from reranker.service.doors.http.tei import TeiRequest
from reranker.service.errors import InvalidArgument
from reranker.service.metrics import ServiceMetrics
from reranker.service.scoring import BackendHealth, RowImages, ScoreCall, Scores
from reranker.settings import Settings

CROSS = ServedModel(
    "cross", ModelKind.CROSS_ENCODER, "Bert", 512, Activation.SIGMOID, ("input_ids",)
)
BI = ServedModel("bi", ModelKind.BI_ENCODER, "Bert", 256, Activation.NONE, ("input_ids",))


@dataclass
class FakeScorer:
    """Scores a document by its length less 5 (a logit), counts a row's characters as its
    tokens, and records each call."""

    served: dict[str, ServedModel] = field(default_factory=lambda: {"cross": CROSS, "bi": BI})
    calls: list[tuple[list[str], TruncationOptions, Sequence[int] | None]] = field(
        default_factory=list
    )
    gate: asyncio.Event | None = None
    health: BackendHealth = field(default_factory=BackendHealth)
    images: list[RowImages | None] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)

    # The repository's models that are not loaded, and what was loaded and unloaded.
    unloaded: dict[str, ServedModel] = field(default_factory=dict)
    loads: list[str] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    load_gate: asyncio.Event | None = None
    # Models whose folder left the repository, and how often the repository was read.
    removed: set[str] = field(default_factory=set)
    repository_reads: int = 0

    @property
    def models(self) -> Mapping[str, ServedModel]:
        return self.served

    async def refresh(self) -> Mapping[str, ServedModel]:
        return self.served

    async def repository_models(self) -> list[str]:
        self.repository_reads += 1
        return sorted({*self.served, *self.unloaded} - self.removed)

    def describe_unloaded(self, name: str) -> ServedModel | None:
        return self.unloaded.get(name)

    async def load(self, name: str) -> None:
        """Loads a model of ``unloaded``; a model named 'broken*' fails, as a bad folder does."""
        self.loads.append(name)
        if self.load_gate is not None:
            await self.load_gate.wait()
        if name.startswith("broken"):
            raise errors.ModelLoadFailed(f"model {name!r} could not be loaded: bad config")
        self.served[name] = self.unloaded.pop(name)

    async def unload(self, name: str) -> None:
        self.unloads.append(name)
        model = self.served.pop(name)
        if name not in self.removed:
            self.unloaded[name] = model

    async def restore_replicas(self) -> list[str]:
        return []

    async def score(self, call: ScoreCall) -> Scores:
        documents = call.documents
        self.calls.append((list(documents), call.options, call.labels))
        self.priorities.append(call.priority)
        self.images.append(call.images)
        if self.gate is not None:
            await self.gate.wait()
        values = np.array([len(d) - 5.0 for d in documents], dtype=np.float32)
        return Scores(values, 1, 0.0, tokens=sum(len(call.query) + len(d) for d in documents))


class FakeChunker:
    """Cuts a document at each '|' into windows."""

    def chunks(
        self,
        model: ServedModel,
        query: str,
        documents: Sequence[str],
        overlap: int,
        max_chunks: int,
        max_document_tokens: int,
    ) -> list[Chunk]:
        return [
            Chunk(i, part)
            for i, document in enumerate(documents)
            for part in document.split("|")[:max_chunks]
        ]


def core_with(scorer: FakeScorer | None = None, **settings: Any) -> tuple[RankCore, FakeScorer]:
    scorer = scorer or FakeScorer()
    config = Settings(**{"default_model": "cross", **settings})
    chunker = cast(DocumentChunker, FakeChunker())  # duck-typed: the core calls chunks() only
    return RankCore(config, scorer, ServiceMetrics(), chunker=chunker), scorer


async def calls_reach(scorer: FakeScorer, count: int) -> None:
    """Waits until ``count`` calls have reached the scorer; fails rather than hang."""
    for _ in range(10_000):
        if len(scorer.calls) >= count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(scorer.calls)} calls reached the scorer, not {count}")


def gated_core(rows: int) -> tuple[RankCore, FakeScorer]:
    """A core over a scorer that holds every call until its gate opens, admitting ``rows``
    rows and calls of up to as many documents."""
    scorer = FakeScorer(gate=asyncio.Event())
    return core_with(scorer, max_rows_in_flight=rows, max_documents_per_call=rows)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


async def test_ranks_best_first_with_ties_in_input_order_and_top_k() -> None:
    core, _ = core_with()
    outcome = await core.rank(RankCall("q", ["abcdefg", "ab", "abcdefg", "abcd"], top_k=3), 1.0)
    assert [r.index for r in outcome.results] == [0, 2, 3]
    assert outcome.results[0].score == pytest.approx(sigmoid(2.0))
    assert outcome.results[2].score == pytest.approx(sigmoid(-1.0))
    assert all(r.text is None for r in outcome.results)
    assert outcome.model.name == "cross" and outcome.pairs == 4


async def test_raw_scores_documents_and_a_model_without_activation() -> None:
    core, _ = core_with()
    raw = await core.rank(
        RankCall("q", ["abcdefg", "ab"], raw_scores=True, return_documents=True), 1.0
    )
    assert [(r.index, r.score, r.text) for r in raw.results] == [
        (0, 2.0, "abcdefg"),
        (1, -3.0, "ab"),
    ]
    cosine = await core.rank(RankCall("q", ["abcdefg", "ab"], model="bi"), 1.0)
    assert [r.score for r in cosine.results] == [2.0, -3.0]


async def test_truncation_options_reach_the_scorer() -> None:
    core, scorer = core_with()
    await core.rank(RankCall("q", ["a"], truncation=Truncation.REFUSE), 1.0)
    await core.rank(RankCall("q", ["a"], max_document_tokens=7), 1.0)
    assert [options for _, options, _ in scorer.calls] == [
        TruncationOptions(refuse=True),
        TruncationOptions(max_document_tokens=7),
    ]


async def test_chunked_documents_keep_their_best_window() -> None:
    core, scorer = core_with()
    outcome = await core.rank(
        RankCall("q", ["ab|abcdefgh|a", "abcdef"], chunking=ChunkingRequest(max_chunks=2)), 1.0
    )
    documents, _, labels = scorer.calls[0]
    assert documents == ["ab", "abcdefgh", "abcdef"] and list(labels or []) == [0, 0, 1]
    assert [(r.index, r.score) for r in outcome.results] == [
        (0, pytest.approx(sigmoid(3.0))),
        (1, pytest.approx(sigmoid(1.0))),
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (RankCall("", ["a"]), "query must not be empty"),
        (RankCall("q", []), "documents must hold"),
        (RankCall("q", ["a"] * 4), "max_documents_per_call=3"),
        (
            RankCall("q", ["a"], model="nope"),
            "'nope' is not served; served models: ['bi', 'cross']",
        ),
        (RankCall("q", ["a"], max_document_tokens=-1), "max_document_tokens must be >= 0"),
        (
            RankCall("q", ["a"], truncation=Truncation.REFUSE, chunking=ChunkingRequest()),
            "exclude each other",
        ),
        (RankCall("q", ["a"], chunking=ChunkingRequest(max_chunks=99)), "max_chunks must be"),
        (
            RankCall("q", ["a"], model="cross", instruction="x"),
            "instruction is not taken by model 'cross'",
        ),
        (RankCall("q", ["a"], priority=10), "priority must be 0 (the most urgent) to 9, got 10"),
        (RankCall("q", ["a"], priority=-1), "priority must be 0 (the most urgent) to 9, got -1"),
    ],
)
async def test_invalid_calls_are_refused_before_scoring(call: RankCall, message: str) -> None:
    core, scorer = core_with(max_documents_per_call=3, max_rows_in_flight=8)
    with pytest.raises(errors.InvalidArgument, match=None) as raised:
        await core.rank(call, 1.0)
    assert message in str(raised.value)
    assert scorer.calls == []


async def test_model_choice() -> None:
    core, _ = core_with(default_model="")
    with pytest.raises(errors.InvalidArgument, match="model must be set"):
        await core.rank(RankCall("q", ["a"]), 1.0)
    alone, _ = core_with(FakeScorer(served={"bi": BI}), default_model="")
    assert (await alone.rank(RankCall("q", ["a"]), 1.0)).model.name == "bi"
    empty, _ = core_with(FakeScorer(served={}))
    with pytest.raises(errors.Unavailable):
        await empty.rank(RankCall("q", ["a"]), 1.0)
    listing = await core.list_models()
    assert [m.name for m in listing.models] == ["bi", "cross"] and listing.default == ""


async def test_the_row_budget_refuses_a_call_that_does_not_fit() -> None:
    core, scorer = gated_core(10)
    first = asyncio.create_task(core.rank(RankCall("q", ["a"] * 6), 1.0))
    await calls_reach(scorer, 1)
    with pytest.raises(errors.ResourceExhausted, match="6 rows in flight"):
        await core.rank(RankCall("q", ["a"] * 5), 1.0)
    assert scorer.gate is not None
    scorer.gate.set()
    await first
    assert core.budget.in_flight == 0


async def test_an_empty_instruction_is_none() -> None:
    core, scorer = core_with()
    outcome = await core.rank(RankCall("q", ["a"], model="cross", instruction=""), 1.0)
    assert [r.index for r in outcome.results] == [0]
    assert scorer.calls[0][1].instruction is None


async def test_as_the_budget_fills_less_urgent_calls_are_refused_first() -> None:
    core, scorer = gated_core(20)
    # 13 rows in flight: 65% of the budget, past priority 8's 60% and within 7's 65%.
    first = asyncio.create_task(core.rank(RankCall("q", ["a"] * 13), 1.0))
    await calls_reach(scorer, 1)
    for priority in (9, 8):
        with pytest.raises(errors.ResourceExhausted, match=f"busy for priority {priority}"):
            await core.rank(RankCall("q", ["a"], priority=priority), 1.0)
    assert scorer.gate is not None
    admitted = [
        asyncio.create_task(core.rank(RankCall("q", ["a"], priority=p), 1.0)) for p in (7, 0)
    ]
    await calls_reach(scorer, 3)
    assert scorer.priorities == [0, 7, 0]
    scorer.gate.set()
    await asyncio.gather(first, *admitted)
    assert core.budget.in_flight == 0


async def test_a_call_without_a_priority_takes_its_teams() -> None:
    core, scorer = core_with()
    with calling_as(Caller("batch", priority=6)):
        await core.rank(RankCall("q", ["a"]), 1.0)
        await core.rank(RankCall("q", ["a"], priority=2), 1.0)
    assert scorer.priorities == [6, 2]


async def test_a_team_over_its_quota_is_refused_and_no_other_team_is() -> None:
    core, scorer = gated_core(100)
    batch, search = Caller("batch", max_rows_in_flight=5), Caller("search", max_rows_in_flight=5)
    with calling_as(batch):
        first = asyncio.create_task(core.rank(RankCall("q", ["a"] * 4), 1.0))
    await calls_reach(scorer, 1)
    with calling_as(batch), pytest.raises(errors.ResourceExhausted, match="team 'batch'"):
        await core.rank(RankCall("q", ["a"] * 2), 1.0)
    with calling_as(batch), pytest.raises(errors.InvalidArgument, match="at most 5 in flight"):
        await core.rank(RankCall("q", ["a"] * 6), 1.0)
    with calling_as(search):
        other = asyncio.create_task(core.rank(RankCall("q", ["a"] * 5), 1.0))
    await calls_reach(scorer, 2)
    assert scorer.gate is not None
    scorer.gate.set()
    await asyncio.gather(first, other)
    assert core.quotas.in_flight == {"batch": 0, "search": 0}


def test_timeout_is_the_deadline_within_the_server_bound() -> None:
    core, _ = core_with(inference_timeout_s=30.0)
    assert core.timeout(None) == 30.0
    assert core.timeout(2.5) == 2.5
    assert core.timeout(99.0) == 30.0
    assert core.timeout(-1.0) == 0.001


# The table, written out by hand: each class's gRPC and HTTP status.
EXPECTED_STATUS = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, 422),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (errors.RequestTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.ModelRestarting, grpc.StatusCode.UNAVAILABLE, 503),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, 401),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (errors.InferenceFailed, grpc.StatusCode.INTERNAL, 500),
    (errors.NotFound, grpc.StatusCode.UNIMPLEMENTED, 404),
]


@pytest.mark.parametrize(("kind", "code", "status"), EXPECTED_STATUS)
def test_each_error_maps_to_one_grpc_and_one_http_status(
    kind: type[errors.RerankError], code: grpc.StatusCode, status: int
) -> None:
    error = kind("message")
    assert errors.grpc_status(error) == code == error.status
    assert errors.http_status(error) == HTTPStatus(status)


def test_tei_shape_options() -> None:
    assert TeiRequest(query="q", texts=["a"]).call().truncation == Truncation.LONGEST_FIRST
    assert TeiRequest(query="q", texts=["a"], truncate=True).call().truncation == "longest_first"
    refused = TeiRequest(query="q", texts=["a"], truncate=False).call()
    assert refused.truncation == Truncation.REFUSE
    for direction in ("left", "Left"):
        call = TeiRequest(query="q", texts=["a"], truncation_direction=direction).call()
        assert call.truncate_left
    assert not TeiRequest(query="q", texts=["a"], truncation_direction="Right").call().truncate_left
    with pytest.raises(errors.InvalidArgument, match="'LEFT'"):
        TeiRequest(query="q", texts=["a"], truncation_direction="LEFT").call()
    with pytest.raises(errors.InvalidArgument, match="'up'"):
        TeiRequest(query="q", texts=["a"], truncation_direction="up").call()
    call = TeiRequest(query="q", texts=["a"], raw_scores=True, return_text=True).call()
    assert call.raw_scores and call.return_documents


async def test_left_truncation_is_refused_by_the_core_for_every_door() -> None:
    core = RankCore(Settings(default_model="cross"), FakeScorer(), ServiceMetrics())
    with pytest.raises(errors.InvalidArgument, match="LEFT is not supported"):
        await core.rank(RankCall("q", ["a"], truncate_left=True), 5.0)


def test_nim_shape_scores_logits_and_refuses_by_default() -> None:
    request = NimRequest.model_validate({"query": {"text": "q"}, "passages": [{"text": "p"}]})
    call = request.call()
    assert call.raw_scores and call.truncation == Truncation.REFUSE
    assert call.documents == ["p"] and call.query == "q"
    end = NimRequest.model_validate(
        {"query": {"text": "q"}, "passages": [{"text": "p"}], "truncate": "END"}
    )
    assert end.call().truncation == Truncation.LONGEST_FIRST


def test_cohere_v1_documents_and_chunks() -> None:
    request = CohereV1Request.model_validate(
        {
            "query": "q",
            "documents": ["plain", {"text": "object", "id": 7}],
            "max_chunks_per_doc": 3,
        }
    )
    call = request.call()
    assert call.documents == ["plain", "object"]
    assert call.chunking == ChunkingRequest(max_chunks=3)
    assert request.document(0) == {"text": "plain"}
    assert request.document(1) == {"text": "object", "id": 7}
    with pytest.raises(errors.InvalidArgument, match="rank_fields"):
        CohereV1Request(query="q", documents=["a"], rank_fields=["title"]).call()


VISION = ServedModel(
    "vision",
    ModelKind.CAUSAL_LM,
    "Qwen3VLForConditionalGeneration",
    4096,
    Activation.SIGMOID,
    ("input_ids", "attention_mask"),
    takes_images=True,
)


def _png(width: int = 8, height: int = 6) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "red").save(buffer, format="PNG")
    return buffer.getvalue()


async def test_images_reach_the_scorer_by_row_and_return_as_sent() -> None:
    from reranker.service.images import CallImage

    core, scorer = core_with(FakeScorer(served={"cross": CROSS, "vision": VISION}))
    page = CallImage(_png(), "image/png")
    call = RankCall(
        "q",
        ["", "a text"],
        model="vision",
        return_documents=True,
        document_images=[page, None],
    )
    outcome = await core.rank(call, 1.0)
    assert scorer.images == [RowImages(b"", [page.data, b""])]
    # An image's tokens cannot be cut: a vision-language model's rows are never truncated.
    assert scorer.calls[0][1].refuse
    assert {r.index: r.image for r in outcome.results} == {0: page, 1: None}
    query_image = RankCall("", ["a"], model="vision", query_image=CallImage(_png()))
    await core.rank(query_image, 1.0)
    assert scorer.images[-1] == RowImages(_png(), [b""])


async def test_images_are_refused_by_name_before_the_scorer_sees_them() -> None:
    from reranker.service.images import CallImage

    core, scorer = core_with(
        FakeScorer(served={"cross": CROSS, "vision": VISION}), max_image_pixels=50
    )
    good, large = CallImage(_png()), CallImage(_png(10, 10))
    cases = {
        "documents[1] is an image, but model 'cross'": RankCall(
            "q", ["a", ""], document_images=[None, good]
        ),
        "the query is an image, but model 'cross'": RankCall("", ["a"], query_image=good),
        "documents[1] image: the image is 10x10 = 100 pixels; the limit is 50": RankCall(
            "q", ["a", ""], model="vision", document_images=[good, large]
        ),
        "documents[0] must not be empty": RankCall(
            "q", ["", "b"], model="vision", document_images=[None, good]
        ),
        "document images hold 1 entries for 2 documents": RankCall(
            "q", ["a", "b"], model="vision", document_images=[good]
        ),
    }
    for message, call in cases.items():
        with pytest.raises(InvalidArgument) as error:
            await core.rank(call, 1.0)
        assert message in str(error.value)
    assert scorer.calls == []


def test_the_server_version_is_the_packages_own() -> None:
    import tomllib
    from pathlib import Path

    from reranker.service.core import SERVER_VERSION

    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    version = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert f"reranker-{version}" == SERVER_VERSION


@pytest.mark.parametrize(
    "call",
    [
        RankCall("", ["a"]),
        RankCall("q", ["a"], truncate_left=True),
        RankCall("q", ["a"], max_document_tokens=-1),
    ],
)
async def test_a_bad_call_is_refused_as_such_before_a_model_is_chosen(call: RankCall) -> None:
    """While no model is loaded, or when the call names none the server has, the caller
    still learns what is wrong with the call itself."""
    empty, _ = core_with(FakeScorer(served={}))
    with pytest.raises(errors.InvalidArgument):
        await empty.rank(call, 1.0)
    several, _ = core_with(default_model="")
    with pytest.raises(errors.InvalidArgument) as raised:
        await several.rank(replace(call, model="nope"), 1.0)
    assert "is not served" not in str(raised.value)


def test_the_version_is_read_from_pyproject_where_the_tree_is_not_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.metadata
    import tomllib
    from pathlib import Path

    from reranker.service import core

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    assert core._package_version() == tomllib.loads(pyproject.read_text())["project"]["version"]


async def test_server_info_reads_the_repository_only_where_the_models_are_shown() -> None:
    core, scorer = core_with(default_model="cross")
    info = await core.server_info()
    assert scorer.repository_reads == 1
    assert info.model_id == "cross" and set(info.models) == {"cross", "bi"}
    # tei.v1.Info has no field for the catalog: nothing is read for it.
    bare = await core.server_info(with_models=False)
    assert scorer.repository_reads == 1 and bare.models == {}
    assert (bare.model_id, bare.max_input_length) == (info.model_id, info.max_input_length)
