"""``reranker.v1.Rank`` over the core, and the interceptor every gRPC service on the port
passes through (API key, server span, decoding, the error taxonomy as status codes)."""

from __future__ import annotations

import logging

import grpc
import grpc.aio
from reranker_api.reranker.v1 import reranker_pb2 as pb
from reranker_api.reranker.v1 import reranker_pb2_grpc as pb_grpc

from reranker.contract.model import ModelKind
from reranker.service.calls import ChunkingRequest, RankCall, Truncation
from reranker.service.catalog import ModelState
from reranker.service.core import ListedModel
from reranker.service.doors.grpc_gate import CoreServicer
from reranker.service.errors import InvalidArgument
from reranker.service.images import CallImage
from reranker.service.results import RankedDocument

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Rank"].full_name
KINDS = {
    ModelKind.CROSS_ENCODER: pb.MODEL_KIND_CROSS_ENCODER,
    ModelKind.BI_ENCODER: pb.MODEL_KIND_BI_ENCODER,
    ModelKind.CAUSAL_LM: pb.MODEL_KIND_CAUSAL_LM,
    ModelKind.LATE_INTERACTION: pb.MODEL_KIND_LATE_INTERACTION,
}


_TRUNCATIONS = {
    pb.TRUNCATION_UNSPECIFIED: Truncation.LONGEST_FIRST,
    pb.TRUNCATION_LONGEST_FIRST: Truncation.LONGEST_FIRST,
    pb.TRUNCATION_REFUSE: Truncation.REFUSE,
}


def rank_call(request: pb.RankRequest) -> RankCall:
    """The core's call for a ``reranker.v1`` request."""
    truncation = _TRUNCATIONS.get(request.truncation)
    if truncation is None:
        raise InvalidArgument(f"truncation has no value {request.truncation}")
    chunking = None
    if request.chunking.enabled:
        chunking = ChunkingRequest(
            overlap_tokens=request.chunking.overlap_tokens
            if request.chunking.HasField("overlap_tokens")
            else None,
            max_chunks=request.chunking.max_chunks,
        )
    return RankCall(
        query=request.query,
        documents=list(request.documents),
        model=request.model,
        top_k=request.top_k if request.HasField("top_k") else None,
        return_documents=request.return_documents,
        raw_scores=request.raw_scores,
        truncation=truncation,
        max_document_tokens=request.max_document_tokens,
        chunking=chunking,
        instruction=request.instruction if request.HasField("instruction") else None,
        query_image=_image(request.query_image) if request.HasField("query_image") else None,
        document_images=[
            _image(image) if image.data else None for image in request.document_images
        ],
        priority=request.priority if request.HasField("priority") else None,
    )


def _image(image: pb.Image) -> CallImage:
    return CallImage(image.data, image.media_type)


def _result(result: RankedDocument) -> pb.RankResult:
    image = result.image
    return pb.RankResult(
        index=result.index,
        score=result.score,
        text=result.text,
        image=None if image is None else pb.Image(data=image.data, media_type=image.media_type),
    )


STATES = {
    ModelState.LOADED: pb.MODEL_STATE_LOADED,
    ModelState.LOADING: pb.MODEL_STATE_LOADING,
    ModelState.UNLOADED: pb.MODEL_STATE_UNLOADED,
    ModelState.FAILED: pb.MODEL_STATE_FAILED,
}


def _model_info(listed: ListedModel, is_default: bool) -> pb.ModelInfo:
    info = pb.ModelInfo(name=listed.name, is_default=is_default, state=STATES[listed.state])
    m = listed.description
    if m is not None:
        info.MergeFrom(
            pb.ModelInfo(
                kind=KINDS[m.kind],
                max_length=m.max_length,
                architecture=m.architecture,
                precision=m.precision.value,
                family=m.family,
                scoring=m.scoring.value,
                takes_instruction=m.takes_instruction,
                runtime=m.runtime.value,
                modalities=m.modalities,
            )
        )
    return info


class RankServicer(CoreServicer, pb_grpc.RankServicer):
    """``reranker.v1.Rank``: converts shapes; the core does the work."""

    async def Rank(
        self, request: pb.RankRequest, context: grpc.aio.ServicerContext
    ) -> pb.RankResponse:
        call = rank_call(request)
        outcome = await self._core.rank(call, self._core.timeout(context.time_remaining()))
        return pb.RankResponse(
            results=[_result(r) for r in outcome.results],
            model=outcome.model.name,
            metadata=pb.RankMetadata(
                pairs=outcome.pairs,
                inference_requests=outcome.inference_requests,
                inference_time_us=int(outcome.inference_time_s * 1e6),
                total_time_us=int(outcome.total_time_s * 1e6),
            ),
            usage=pb.Usage(input_tokens=outcome.tokens),
        )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        listing = await self._core.list_models()
        return pb.ListModelsResponse(
            models=[
                _model_info(listed, listed.name == listing.default) for listed in listing.models
            ]
        )
