"""Triton's dynamic batcher really merges concurrent rank calls into shared executions."""

from __future__ import annotations

import asyncio
import time

import tritonclient.grpc as triton_grpc
from reranker_client import AsyncRerankClient

from tests.integration.conftest import CROSS_ENCODER, Server


def encoder_counts(server: Server) -> tuple[int, int]:
    client = triton_grpc.InferenceServerClient(server.triton_grpc)
    try:
        (stats,) = client.get_inference_statistics(CROSS_ENCODER + "__encoder").model_stats
    finally:
        client.close()
    return stats.inference_count, stats.execution_count


async def test_concurrent_calls_merge_into_shared_executions(server: Server) -> None:
    # One document per call: a call is one row, so any execution of more than one row
    # holds rows of different calls, merged although their padded lengths differ.
    documents = [f"document {i}: " + "words of varying length " * (1 + i % 5) for i in range(64)]
    bursts: list[str] = []
    async with AsyncRerankClient(server.address, timeout=60) as client:
        await client.rank("warm up", ["document"], model=CROSS_ENCODER)
        # A burst that meets the encoder idle while the host's cores are busy elsewhere can
        # trickle in a row at a time: up to three bursts.
        while len(bursts) < 3:
            rows, runs = await _burst(client, server, documents)
            bursts.append(f"{rows} rows in {runs} executions")
            assert rows >= len(documents), f"{rows} rows recorded of {len(documents)}"
            if rows / runs >= 2:
                break
    print("; ".join(bursts))
    assert rows / runs >= 2, "; ".join(bursts)


async def _burst(
    client: AsyncRerankClient, server: Server, documents: list[str]
) -> tuple[int, int]:
    """Rows and executions of the encoder for ``documents`` sent as concurrent calls."""
    inferences_before, executions_before = encoder_counts(server)
    results = await asyncio.gather(
        *(client.rank(f"query {i}", [doc], model=CROSS_ENCODER) for i, doc in enumerate(documents))
    )
    assert all(len(r) == 1 for r in results)
    # Triton records statistics just after it sends the responses: wait until all rows show.
    deadline = time.monotonic() + 10
    inferences, executions = encoder_counts(server)
    while inferences - inferences_before < len(documents) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        inferences, executions = encoder_counts(server)
    return inferences - inferences_before, executions - executions_before
