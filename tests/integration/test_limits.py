"""Limits, backpressure and deadlines: every refusal is fast, names its limit, and leaves
the server serving. Each test runs a rank service with its own limits over the session's
Triton."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_client import (
    AsyncRerankClient,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
)

from reranker.builder.builder import DEFAULT_MODEL_NAME
from reranker.service.server import RankServer
from tests.integration.conftest import Server, rank_server, rank_service

RANK_METHOD = "/reranker.v1.Rank/Rank"
# Long enough that a call of many of them takes over a second on two cores.
LONG_DOCUMENT = " ".join(f"passage {i} about rivers, tides and the moon" for i in range(40))


async def test_each_limit_is_named_with_the_value(server: Server, repository: Path) -> None:
    async with (
        rank_service(
            server.triton_grpc,
            model_repository=repository,  # chunking reads the tokenizer from it
            default_model=DEFAULT_MODEL_NAME,
            max_documents_per_call=8,
            max_rows_in_flight=8,
            max_query_bytes=100,
            max_document_bytes=4000,
            max_request_bytes=20000,
        ) as address,
        AsyncRerankClient(address, timeout=30) as client,
    ):
        cases = [
            (
                ("q", ["d"] * 9),
                "documents holds 9 documents; the limit is max_documents_per_call=8",
            ),
            (("é" * 51, ["d"]), "query is 102 bytes; the limit is max_query_bytes=100"),
            (
                ("q", ["d", "ü" * 2001]),
                "documents[1] is 4002 bytes; the limit is max_document_bytes",
            ),
        ]
        for (query, documents), message in cases:
            with pytest.raises(InvalidArgumentError) as raised:
                await client.rank(query, documents)
            assert message in raised.value.details
        # Chunking multiplies rows: a call that can never fit is refused as invalid.
        with pytest.raises(InvalidArgumentError, match="max_rows_in_flight=8"):
            await client.rank("q", [LONG_DOCUMENT * 2] * 4, chunking=True, max_chunks=16)
        # Over the message size, gRPC itself refuses, naming both sizes.
        with pytest.raises(ResourceExhaustedError) as too_big:
            await client.rank("q", ["x" * 3000] * 7)
        assert "20000" in too_big.value.details
        results = await client.rank("q", ["x" * 3000, "a river"])
        assert sorted(r["corpus_id"] for r in results) == [0, 1]


async def test_malformed_messages_are_invalid_arguments(server: Server) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        rank = channel.unary_unary(RANK_METHOD)
        not_utf8 = b"\x0a\x02\xff\xfe" + pb.RankRequest(documents=["d"]).SerializeToString()
        for payload in (b"\xff\xff\xff\xff", not_utf8):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await rank(payload, timeout=10)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid message for /reranker.v1.Rank/Rank" in (
                raised.value.details() or ""
            )
        # The server is unharmed.
        good = pb.RankRequest(query="q", documents=["a", "b"]).SerializeToString()
        response = pb.RankResponse.FromString(await rank(good, timeout=30))
        assert len(response.results) == 2


@contextlib.asynccontextmanager
async def budget_of_48_rows(server: Server) -> AsyncIterator[tuple[AsyncRerankClient, RankServer]]:
    """A client of a rank service that admits 48 rows at a time, and that service."""
    async with (
        rank_server(
            server.triton_grpc,
            default_model=DEFAULT_MODEL_NAME,
            max_documents_per_call=48,
            max_rows_in_flight=48,
        ) as service,
        AsyncRerankClient(f"127.0.0.1:{service.grpc_port}", timeout=60) as client,
    ):
        yield client, service


async def _rows_in_flight_reach(service: RankServer, rows: int, within_s: float) -> None:
    """Waits until the service holds ``rows`` rows; fails after ``within_s``."""
    deadline = time.perf_counter() + within_s
    while service.core.budget.in_flight != rows:
        assert time.perf_counter() < deadline, (
            f"{service.core.budget.in_flight} rows in flight, not {rows}, after {within_s}s"
        )
        await asyncio.sleep(0.005)


async def test_calls_over_capacity_are_refused_at_once(server: Server) -> None:
    async with budget_of_48_rows(server) as (client, service):
        busy = asyncio.create_task(client.rank("moon", [LONG_DOCUMENT] * 48))
        await _rows_in_flight_reach(service, 48, within_s=30)
        start = time.perf_counter()
        with pytest.raises(ResourceExhaustedError) as raised:
            await client.rank("moon", ["one more"])
        refused_in = time.perf_counter() - start
        assert not busy.done(), "the full call must still be running for this to mean anything"
        assert "max_rows_in_flight=48" in raised.value.details
        assert refused_in < 0.5
        assert len(await busy) == 48
        # Capacity comes back when the call ends.
        assert len(await client.rank("moon", ["one more"])) == 1


async def test_a_cancelled_or_expired_call_releases_its_capacity(server: Server) -> None:
    async with budget_of_48_rows(server) as (client, service):
        full_call = [LONG_DOCUMENT] * 48
        start = time.perf_counter()
        await client.rank("moon", full_call)
        full_call_s = time.perf_counter() - start

        # Expired, a quarter of the way through: DEADLINE_EXCEEDED, and its rows are released
        # at once, so the next full call is admitted.
        with pytest.raises(DeadlineExceededError):
            await client.rank("moon", full_call, timeout=full_call_s / 4)
        await _rows_in_flight_reach(service, 0, within_s=0.3)
        await _admitted_within(client, full_call, 0.3)

        # Cancelled by the caller while its rows are held.
        cancelled = asyncio.create_task(client.rank("moon", full_call))
        await _rows_in_flight_reach(service, 48, within_s=30)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        await _rows_in_flight_reach(service, 0, within_s=0.3)
        await _admitted_within(client, full_call, 0.3)


async def _admitted_within(client: AsyncRerankClient, documents: list[str], limit_s: float) -> None:
    """The call is admitted (not RESOURCE_EXHAUSTED) within ``limit_s`` of retrying."""
    deadline = time.perf_counter() + limit_s
    while True:
        try:
            results = await client.rank("moon", documents)
        except ResourceExhaustedError:
            if time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        assert len(results) == len(documents)
        return
