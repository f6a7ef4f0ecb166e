"""Text Embeddings Inference's gRPC API (``tei.v1.Rerank``, ``tei.v1.Info``) over the core.

Only shapes are converted here. TEI's ``truncate`` is a plain proto3 bool, so unset and false
cannot be told apart: like TEI run with ``--auto-truncate``, this server truncates either way
(right side, longest first, as sentence-transformers does). ``TRUNCATION_DIRECTION_LEFT`` is
refused rather than ignored.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
from reranker_api.tei.v1 import tei_pb2 as tei
from reranker_api.tei.v1 import tei_pb2_grpc as tei_grpc

from reranker.service.calls import RankCall
from reranker.service.core import RankCore, RankOutcome
from reranker.service.doors.grpc_gate import CoreServicer
from reranker.service.errors import InvalidArgument


def _call(
    query: str, texts: Sequence[str], raw_scores: bool, return_text: bool, direction: int
) -> RankCall:
    if direction not in (tei.TRUNCATION_DIRECTION_LEFT, tei.TRUNCATION_DIRECTION_RIGHT):
        raise InvalidArgument(f"truncation_direction has no value {direction}")
    return RankCall(
        query=query,
        documents=list(texts),
        raw_scores=raw_scores,
        return_documents=return_text,
        truncate_left=direction == tei.TRUNCATION_DIRECTION_LEFT,
    )


def _response(outcome: RankOutcome, texts: Sequence[str]) -> tei.RerankResponse:
    return tei.RerankResponse(
        ranks=[tei.Rank(index=r.index, text=r.text, score=r.score) for r in outcome.results],
        metadata=tei.Metadata(
            compute_chars=sum(len(t) for t in texts),
            compute_tokens=outcome.tokens,
            total_time_ns=int(outcome.total_time_s * 1e9),
            inference_time_ns=int(outcome.inference_time_s * 1e9),
        ),
    )


class RerankServicer(CoreServicer, tei_grpc.RerankServicer):
    async def Rerank(
        self, request: tei.RerankRequest, context: grpc.aio.ServicerContext
    ) -> tei.RerankResponse:
        call = _call(
            request.query,
            request.texts,
            request.raw_scores,
            request.return_text,
            request.truncation_direction,
        )
        outcome = await self._core.rank(call, self._core.timeout(context.time_remaining()))
        return _response(outcome, request.texts)

    async def RerankStream(
        self,
        request_iterator: AsyncIterator[tei.RerankStreamRequest],
        context: grpc.aio.ServicerContext,
    ) -> tei.RerankResponse:
        start = time.monotonic()
        first: tei.RerankStreamRequest | None = None
        texts: list[str] = []
        limit = self._core.limits.max_documents
        async for message in request_iterator:
            if first is None:
                first = message
            elif message.query != first.query:
                raise InvalidArgument(
                    f"message {len(texts)} has another query than the first: one stream "
                    "ranks its texts against one query"
                )
            texts.append(message.text)
            if len(texts) > limit:
                # Counted as they arrive, so a runaway stream is not buffered to the end.
                raise InvalidArgument(
                    f"the stream holds more than {limit} texts; the limit is "
                    f"max_documents_per_call={limit}"
                )
        if first is None:
            raise InvalidArgument("the stream carried no message: send at least one text")
        call = _call(
            first.query, texts, first.raw_scores, first.return_text, first.truncation_direction
        )
        remaining = context.time_remaining()
        elapsed = time.monotonic() - start
        outcome = await self._core.rank(
            call, self._core.timeout(None if remaining is None else remaining - elapsed)
        )
        return _response(outcome, texts)


class InfoServicer(CoreServicer, tei_grpc.InfoServicer):
    async def Info(
        self, request: tei.InfoRequest, context: grpc.aio.ServicerContext
    ) -> tei.InfoResponse:
        info = await self._core.server_info(with_models=False)
        return tei.InfoResponse(
            version=info.version,
            model_id=info.model_id,
            model_dtype=info.dtype,
            model_type=tei.MODEL_TYPE_RERANKER,
            max_concurrent_requests=info.max_concurrent_requests,
            max_input_length=info.max_input_length,
            max_batch_tokens=info.max_batch_tokens,
            max_client_batch_size=info.max_client_batch_size,
            tokenization_workers=1,
        )


def add_to_server(core: RankCore, server: grpc.aio.Server) -> tuple[str, ...]:
    """Adds ``tei.v1.Rerank`` and ``tei.v1.Info``; returns their names (for reflection)."""
    tei_grpc.add_RerankServicer_to_server(RerankServicer(core), server)
    tei_grpc.add_InfoServicer_to_server(InfoServicer(core), server)
    services = tei.DESCRIPTOR.services_by_name
    return (services["Rerank"].full_name, services["Info"].full_name)
