"""Blocking and asyncio clients for the reranking server."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc
import grpc.aio
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker_client._convert import (
    Content,
    ModelInfo,
    RankOptions,
    build_rank_request,
    call_metadata,
    channel_options,
    model_infos,
    rank_results,
)
from reranker_client.errors import from_rpc_error

_Metadata = Sequence[tuple[str, str]]


class RerankClient:
    """Blocking client.

    Args:
        target: Server address, e.g. ``"localhost:50051"``.
        timeout: Default per-call timeout in seconds (None waits indefinitely).
        credentials: Channel credentials for TLS; None for a plaintext channel.
        metadata: Metadata sent with every call.
        api_key: The server's API key, sent as ``authorization: Bearer <key>``.
        options: Extra gRPC channel options.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: _Metadata = (),
        api_key: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = channel_options(options)
        self._channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._stub = pb_grpc.RankStub(self._channel)
        self._timeout = timeout
        self._metadata = call_metadata(metadata, api_key)

    def rank(
        self,
        query: Content,
        documents: Sequence[Content],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        model: str = "",
        raw_scores: bool = False,
        truncation: str = "longest_first",
        max_document_tokens: int | None = None,
        chunking: bool = False,
        chunk_overlap_tokens: int | None = None,
        max_chunks: int | None = None,
        instruction: str | None = None,
        priority: int | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Ranks ``documents`` by relevance to ``query``.

        Args:
            query: The query: text, or for a model whose ``modalities`` include
                ``"image"``, an image (encoded bytes or a PIL image) or
                ``{"image": ..., "text": ...}``.
            documents: The documents to rank, each as ``query`` may be.
            top_k: Return only the best ``top_k`` (default: all).
            return_documents: Include each document's text as ``"text"``.
            model: Served model to use (default: the server's default model).
            raw_scores: Return logits instead of sigmoid scores (cross-encoders).
            truncation: ``"longest_first"`` (default) truncates pairs that are too long;
                ``"refuse"`` fails with ``InvalidArgumentError`` naming the document.
            max_document_tokens: Read at most this many tokens of each document.
            chunking: Score long documents window by window and keep each document's best
                window instead of truncating it.
            chunk_overlap_tokens: Tokens consecutive windows share (default: the server's).
            max_chunks: Windows per document at most (default: the server's limit).
            instruction: A task instruction, for models that take one (``ModelInfo.
                takes_instruction``); unset uses the model's default.
            priority: 0 (the most urgent) to 9; under load, lower is handled earlier and
                refused last (default: the API key's default priority, else 0).
            timeout: Seconds for this call (default: the client's timeout).

        Returns:
            ``[{"corpus_id": int, "score": float, "text": str?}, ...]`` best first, as
            sentence-transformers' ``CrossEncoder.rank()`` returns it.

        Raises:
            RerankError: a subclass per gRPC status (see ``reranker_client.errors``).
        """
        request = build_rank_request(
            query,
            documents,
            RankOptions(
                top_k=top_k,
                return_documents=return_documents,
                model=model,
                raw_scores=raw_scores,
                truncation=truncation,
                max_document_tokens=max_document_tokens,
                chunking=chunking,
                chunk_overlap_tokens=chunk_overlap_tokens,
                max_chunks=max_chunks,
                instruction=instruction,
                priority=priority,
            ),
        )
        try:
            response = self._stub.Rank(
                request,
                timeout=self._timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return rank_results(response, documents)

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models the server serves."""
        try:
            response = self._stub.ListModels(
                pb.ListModelsRequest(),
                timeout=self._timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return model_infos(response)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRerankClient:
    """asyncio client; same arguments and methods as :class:`RerankClient`, awaited."""

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: _Metadata = (),
        api_key: str | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        opts = channel_options(options)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self._stub = pb_grpc.RankStub(self._channel)
        self._timeout = timeout
        self._metadata = call_metadata(metadata, api_key)

    async def rank(
        self,
        query: Content,
        documents: Sequence[Content],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        model: str = "",
        raw_scores: bool = False,
        truncation: str = "longest_first",
        max_document_tokens: int | None = None,
        chunking: bool = False,
        chunk_overlap_tokens: int | None = None,
        max_chunks: int | None = None,
        instruction: str | None = None,
        priority: int | None = None,
        timeout: float | None = None,
    ) -> list[dict[str, Any]]:
        """Ranks ``documents`` by relevance to ``query``; see :meth:`RerankClient.rank`."""
        request = build_rank_request(
            query,
            documents,
            RankOptions(
                top_k=top_k,
                return_documents=return_documents,
                model=model,
                raw_scores=raw_scores,
                truncation=truncation,
                max_document_tokens=max_document_tokens,
                chunking=chunking,
                chunk_overlap_tokens=chunk_overlap_tokens,
                max_chunks=max_chunks,
                instruction=instruction,
                priority=priority,
            ),
        )
        try:
            response = await self._stub.Rank(
                request,
                timeout=self._timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return rank_results(response, documents)

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Lists the models the server serves."""
        try:
            response = await self._stub.ListModels(
                pb.ListModelsRequest(),
                timeout=self._timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return model_infos(response)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncRerankClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
