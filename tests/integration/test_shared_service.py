"""One service for many callers, through Triton: priorities, small calls beside large ones,
token usage in every response shape, and named keys with quotas and their reload.

Orders are judged by which call completes first, never by timings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import cohere
import grpc
import httpx
import pytest
from prometheus_client import generate_latest
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc
from reranker_api.tei.v1 import tei_pb2, tei_pb2_grpc
from reranker_client import AsyncRerankClient, ResourceExhaustedError, UnauthenticatedError
from transformers import AutoTokenizer

from reranker.builder.builder import DEFAULT_MODEL_NAME
from reranker.service.metrics import ServiceMetrics
from reranker.service.server import RankServer
from tests.integration.conftest import CROSS_ENCODER, Server, rank_server
from tests.launcher import start_server, stop_server

# Long enough that an inference request of a few of them takes a noticeable time.
LONG_DOCUMENT = " ".join(f"passage {i} about rivers, tides and the moon" for i in range(40))
SHORT_DOCUMENTS = ["a river meets the sea", "tax forms", "the moon pulls the tides"]
QUERY = "where do rivers go"


@contextlib.asynccontextmanager
async def one_request_at_a_time(
    server: Server, **settings: Any
) -> AsyncIterator[tuple[RankServer, AsyncRerankClient]]:
    """A rank service that sends Triton one inference request of at most 8 rows at a time,
    so calls visibly take turns, and a client of it."""
    async with (
        rank_server(
            server.triton_grpc,
            **{
                "default_model": DEFAULT_MODEL_NAME,
                "max_rows_per_request": 8,
                "requests_in_flight_per_model": 1,
                "max_documents_per_call": 96,
                "max_rows_in_flight": 200,
                **settings,
            },
        ) as service,
        AsyncRerankClient(f"127.0.0.1:{service.grpc_port}", timeout=120) as client,
    ):
        yield service, client


async def rows_in_flight_reach(service: RankServer, rows: int, within_s: float = 30) -> None:
    deadline = time.perf_counter() + within_s
    while service.core.budget.in_flight != rows:
        assert time.perf_counter() < deadline, f"{service.core.budget.in_flight} rows, not {rows}"
        await asyncio.sleep(0.005)


class CompletionOrder:
    """Starts calls by name and notes the order in which they complete."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def start(self, name: str, call: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(call)
        task.add_done_callback(lambda _: self.order.append(name))
        return task


async def test_a_small_call_does_not_wait_for_a_large_one(server: Server) -> None:
    async with one_request_at_a_time(server) as (service, client):
        alone = await client.rank(QUERY, SHORT_DOCUMENTS)
        large_documents = [f"{i} {LONG_DOCUMENT}" for i in range(96)]  # 12 requests
        calls = CompletionOrder()
        large_call = calls.start("large", client.rank(QUERY, large_documents))
        await rows_in_flight_reach(service, 96)
        small = await client.rank(QUERY, SHORT_DOCUMENTS)
        # The small call took its turn between the large call's requests.
        assert calls.order == [], "the small call waited for the whole large call"
        assert small == alone
        large = await large_call
        assert sorted(r["corpus_id"] for r in large) == list(range(96))
        assert service.core.budget.in_flight == 0


async def test_the_most_urgent_call_goes_first_under_load(server: Server) -> None:
    async with one_request_at_a_time(server) as (service, client):
        documents = [LONG_DOCUMENT] * 16  # two requests each
        calls = CompletionOrder()
        running = calls.start("running", client.rank(QUERY, [LONG_DOCUMENT] * 64, priority=5))
        await rows_in_flight_reach(service, 64)
        later = calls.start("later", client.rank(QUERY, documents, priority=5))
        urgent = calls.start("urgent", client.rank(QUERY, documents, priority=0))
        results = await asyncio.gather(running, later, urgent)
        # The urgent call arrived last and is answered first; the call of the same priority
        # as the running one shares turns with it and ends before it.
        assert calls.order == ["urgent", "later", "running"]
        assert [len(r) for r in results] == [64, 16, 16]


async def test_as_the_budget_fills_less_urgent_calls_are_refused_first(server: Server) -> None:
    async with one_request_at_a_time(server, max_rows_in_flight=40, max_documents_per_call=40) as (
        service,
        client,
    ):
        held = asyncio.ensure_future(client.rank(QUERY, [LONG_DOCUMENT] * 24))
        await rows_in_flight_reach(service, 24)  # 60%: past priority 9's 55%, within 8's 60%
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            call = reranker_pb2_grpc.RankStub(channel).Rank(
                pb.RankRequest(query=QUERY, documents=["a"], priority=9), timeout=30
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "busy for priority 9" in (raised.value.details() or "")
            assert ("retry-after", "1") in tuple(await call.trailing_metadata() or ())
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            body = {"query": QUERY, "documents": ["a"], "priority": 9}
            answer = await http.post("/v2/rerank", json=body)
            assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
            assert "busy for priority 9" in answer.json()["message"]
        admitted = asyncio.ensure_future(client.rank(QUERY, ["a"], priority=8))
        await rows_in_flight_reach(service, 25)  # now past priority 8's share too
        with pytest.raises(ResourceExhaustedError, match="busy for priority 8"):
            await client.rank(QUERY, ["a"], priority=8)
        most_urgent = asyncio.ensure_future(client.rank(QUERY, ["a"] * 15, priority=0))
        await rows_in_flight_reach(service, 40)
        with pytest.raises(ResourceExhaustedError, match="server at capacity"):
            await client.rank(QUERY, ["a"], priority=0)
        assert [len(r) for r in await asyncio.gather(held, admitted, most_urgent)] == [24, 1, 15]


def test_usage_is_the_tokenizers_own_count_in_every_shape(server: Server, checkpoint: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    expected = sum(len(tokenizer(QUERY, d)["input_ids"]) for d in SHORT_DOCUMENTS)
    body = {"model": CROSS_ENCODER, "query": QUERY, "documents": SHORT_DOCUMENTS}
    with grpc.insecure_channel(server.address) as channel:
        request = pb.RankRequest(query=QUERY, documents=SHORT_DOCUMENTS, model=CROSS_ENCODER)
        response = reranker_pb2_grpc.RankStub(channel).Rank(request, timeout=60)
        assert response.usage.input_tokens == expected
        # TEI's gRPC serves the default model, a bi-encoder of the same tokenizer: each row
        # reads the query and the document apart.
        tei = tei_pb2_grpc.RerankStub(channel).Rerank(
            tei_pb2.RerankRequest(query=QUERY, texts=SHORT_DOCUMENTS), timeout=60
        )
        apart = sum(
            len(tokenizer(QUERY)["input_ids"]) + len(tokenizer(d)["input_ids"])
            for d in SHORT_DOCUMENTS
        )
        assert tei.metadata.compute_tokens == apart
    v2 = cohere.ClientV2(base_url=server.http_url, api_key="unused").rerank(
        model=CROSS_ENCODER, query=QUERY, documents=SHORT_DOCUMENTS, priority=3
    )
    assert v2.meta is not None and v2.meta.billed_units is not None and v2.meta.tokens
    assert v2.meta.billed_units.search_units == 1
    assert v2.meta.tokens.input_tokens == expected
    v1 = cohere.Client(base_url=server.http_url, api_key="unused").rerank(
        model=CROSS_ENCODER, query=QUERY, documents=SHORT_DOCUMENTS
    )
    assert v1.meta is not None and v1.meta.billed_units is not None
    assert v1.meta.billed_units.search_units == 1
    import voyageai
    from mixedbread import Mixedbread

    voyage = voyageai.Client(api_key="unused", base_url=f"{server.http_url}/voyage/v1")
    assert voyage.rerank(QUERY, SHORT_DOCUMENTS, model=CROSS_ENCODER).total_tokens == expected
    mixedbread = Mixedbread(api_key="unused", base_url=server.http_url, max_retries=0)
    answer = mixedbread.rerank(model=CROSS_ENCODER, query=QUERY, input=SHORT_DOCUMENTS)
    assert answer.usage.total_tokens == expected
    with httpx.Client(base_url=server.http_url, timeout=60) as http:
        for path in ("/v1/rerank", "/v2/rerank", "/rerank"):  # Jina, vLLM, llama.cpp
            answer = http.post(path, json=body).json()
            assert answer["usage"] == {"prompt_tokens": expected, "total_tokens": expected}
        score = {"model": CROSS_ENCODER, "text_1": QUERY, "text_2": SHORT_DOCUMENTS}
        vllm = http.post("/score", json=score).json()
        assert vllm["usage"]["prompt_tokens"] == expected


TEAMS = """
[teams.batch]
keys = ["sk-batch-0001"]
max_rows_in_flight = 16
priority = 4

[teams.search]
keys = ["sk-search-001"]
"""


def key_file(directory: Path, text: str = TEAMS) -> Path:
    path = directory / "keys.toml"
    path.write_text(text)
    return path


async def test_a_team_over_its_quota_is_refused_and_another_is_not(
    server: Server, tmp_path: Path
) -> None:
    metrics = ServiceMetrics()
    async with (
        one_request_at_a_time(server, metrics=metrics, api_keys_file=str(key_file(tmp_path))) as (
            service,
            _,
        ),
        AsyncRerankClient(f"127.0.0.1:{service.grpc_port}", api_key="sk-batch-0001") as batch,
        AsyncRerankClient(f"127.0.0.1:{service.grpc_port}", api_key="sk-search-001") as search,
    ):
        held = asyncio.ensure_future(batch.rank(QUERY, [LONG_DOCUMENT] * 16))
        await rows_in_flight_reach(service, 16)
        with pytest.raises(ResourceExhaustedError, match="team 'batch'"):
            await batch.rank(QUERY, ["a"])
        headers = {"authorization": "Bearer sk-batch-0001"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
            answer = await http.post(
                "/v2/rerank", json={"query": QUERY, "documents": ["a"]}, headers=headers
            )
        assert answer.status_code == 429 and answer.headers["retry-after"] == "1"
        assert "team 'batch'" in answer.json()["message"]
        # Another team is served while the first is at its quota.
        assert len(await search.rank(QUERY, SHORT_DOCUMENTS)) == 3
        assert not held.done()
        assert len(await held) == 16
    sample = metrics.registry.get_sample_value
    labels = {"model": DEFAULT_MODEL_NAME}
    assert sample("reranker_rows_total", {**labels, "team": "batch"}) == 16
    assert sample("reranker_rows_total", {**labels, "team": "search"}) == 3
    assert (sample("reranker_tokens_total", {**labels, "team": "search"}) or 0) > 0
    exposed = generate_latest(metrics.registry)
    assert b"sk-batch" not in exposed and b"sk-search" not in exposed


async def retry_until(check: Callable[[], Awaitable[bool]], within_s: float) -> None:
    deadline = time.perf_counter() + within_s
    while not await check():
        assert time.perf_counter() < deadline, "not so within the time"
        await asyncio.sleep(0.1)


async def test_a_changed_key_file_is_read_without_a_restart(server: Server, tmp_path: Path) -> None:
    path = key_file(tmp_path)
    async with one_request_at_a_time(server, api_keys_file=str(path)) as (service, _):
        address = f"127.0.0.1:{service.grpc_port}"

        async def admits(key: str) -> bool:
            async with AsyncRerankClient(address, api_key=key) as client:
                try:
                    await client.rank(QUERY, ["a"])
                except UnauthenticatedError:
                    return False
                return True

        assert await admits("sk-batch-0001")
        assert not await admits("sk-ops-0000001")
        path.write_text('[teams.ops]\nkeys = ["sk-ops-0000001"]\n')
        await retry_until(lambda: admits("sk-ops-0000001"), within_s=5)
        assert not await admits("sk-batch-0001")
        # A file that no longer reads keeps the keys in force.
        path.write_text("[teams.ops\n")
        await asyncio.sleep(1.2)
        assert await admits("sk-ops-0000001")


def test_sighup_reloads_the_keys(server: Server, repository: Path, tmp_path: Path) -> None:
    path = key_file(tmp_path)
    served = start_server(
        repository,
        tmp_path / "service",
        DEFAULT_MODEL_NAME,
        triton_url=server.triton_grpc,
        api_keys_file=str(path),
        http_port="-1",
    )
    try:

        def admits(key: str) -> bool:
            with grpc.insecure_channel(served.address) as channel:
                try:
                    reranker_pb2_grpc.RankStub(channel).Rank(
                        pb.RankRequest(query=QUERY, documents=["a"]),
                        metadata=[("authorization", f"Bearer {key}")],
                        timeout=30,
                    )
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
                    return False
                return True

        assert admits("sk-search-001")
        # The same size and time stamp: only the signal tells the server to read it.
        stamp = path.stat()
        path.write_text(TEAMS.replace("sk-search-001", "sk-search-002"))
        os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        time.sleep(1.2)
        assert admits("sk-search-001") and not admits("sk-search-002")
        served.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not admits("sk-search-002"):
            assert time.monotonic() < deadline, "SIGHUP did not reload the keys"
            time.sleep(0.1)
        assert not admits("sk-search-001")
        assert served.process.poll() is None
    finally:
        assert stop_server(served) == 0


async def test_an_empty_instruction_is_no_instruction(server: Server) -> None:
    async with AsyncRerankClient(server.address, timeout=60) as client:
        without = await client.rank(QUERY, SHORT_DOCUMENTS)
        assert await client.rank(QUERY, SHORT_DOCUMENTS, instruction="") == without
    with httpx.Client(base_url=server.http_url, timeout=60) as http:
        body = {"query": QUERY, "documents": SHORT_DOCUMENTS}
        answer = http.post("/v2/rerank", json={**body, "instruct": ""})
        assert answer.status_code == 200, answer.text
        assert [r["index"] for r in answer.json()["results"]] == [r["corpus_id"] for r in without]
