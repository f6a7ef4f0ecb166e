"""What a failed Triton request means to a caller: Triton says most of what went wrong only
in its message text, so this is the one place that reads that text."""

from __future__ import annotations

import grpc
from tritonclient.utils import InferenceServerException

from reranker.service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    ModelNotLoaded,
    ModelRestarting,
    RerankError,
    Unavailable,
)

_UNREACHABLE = (
    "StatusCode.UNAVAILABLE",
    "failed to connect",
    "Connection refused",
    "Socket closed",
)
# What Triton says when a Python-backend stub process has died (Triton does not restart it).
_STUB_DEAD = "is not healthy"
# A model the service knows but Triton does not have loaded: Triton is (re)starting.
_NOT_LOADED = ("Request for unknown model", "has no available versions")

# tritonclient hands a gRPC failure's code on as text (``str(grpc.StatusCode.X)``).
_STATUS_CODES = {str(code): code for code in grpc.StatusCode}


def translate(error: InferenceServerException, url: str) -> RerankError:
    status = _STATUS_CODES.get(error.status() or "")
    return classify(status, error.message() or str(error), url)


def classify(status: grpc.StatusCode | None, message: str, url: str) -> RerankError:
    """The error a caller sees for a failed Triton request. Triton says most of what went
    wrong only in its message text, so this is the one place that reads that text."""
    if status is grpc.StatusCode.DEADLINE_EXCEEDED or "Deadline Exceeded" in message:
        return DeadlineExceeded("the deadline passed before inference finished")
    if status is grpc.StatusCode.UNAVAILABLE or any(s in message for s in _UNREACHABLE):
        return Unavailable(f"inference server at {url} is unreachable")
    if status is grpc.StatusCode.CANCELLED or message == "CANCELLED":
        # Not the caller (that cancels this task): Triton dropped the request, shutting down.
        return Unavailable(f"inference server at {url} cancelled the request (stopping?)")
    if any(s in message for s in _NOT_LOADED):
        return ModelNotLoaded(f"the model is not loaded: {message}")
    if _STUB_DEAD in message:
        return ModelRestarting(f"a model process died and is being restarted: {message}")
    return InferenceFailed(f"inference failed: {message}")
