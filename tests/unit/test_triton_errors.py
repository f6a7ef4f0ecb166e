"""Triton says what went wrong mostly in message text: each message it sends, as Triton 2.51
and gRPC word them, maps to the error a caller sees."""

from __future__ import annotations

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from reranker.service import errors
from reranker.service.triton_errors import classify, translate

URL = "127.0.0.1:8001"


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", errors.DeadlineExceeded),
        (None, "Deadline Exceeded", errors.DeadlineExceeded),
        (
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8001: "
            "Failed to connect to remote host: Connection refused",
            errors.Unavailable,
        ),
        (None, "Socket closed", errors.Unavailable),
        (grpc.StatusCode.CANCELLED, "Locally cancelled by application!", errors.Unavailable),
        (None, "CANCELLED", errors.Unavailable),
        (
            grpc.StatusCode.NOT_FOUND,
            "Request for unknown model: 'm' is not found",
            errors.ModelNotLoaded,  # an Unavailable: the status callers see is the same
        ),
        (
            grpc.StatusCode.UNAVAILABLE,
            "Request for unknown model: 'm' has no available versions",
            errors.Unavailable,
        ),
        (
            grpc.StatusCode.INTERNAL,
            "Failed to process the request(s) for model 'm__encoder_0_0', message: Stub process "
            "'m__encoder_0_0' is not healthy.",
            errors.ModelRestarting,
        ),
        (
            grpc.StatusCode.INTERNAL,
            "in ensemble 'm', inference failed: RuntimeError: out of memory",
            errors.InferenceFailed,
        ),
    ],
)
def test_each_triton_message_maps_to_its_error(
    status: grpc.StatusCode | None, message: str, kind: type[errors.RerankError]
) -> None:
    error = classify(status, message, URL)
    assert type(error) is kind
    assert message in str(error) or URL in str(error) or "deadline" in str(error)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("StatusCode.DEADLINE_EXCEEDED", errors.DeadlineExceeded),
        ("StatusCode.UNAVAILABLE", errors.Unavailable),
        ("StatusCode.CANCELLED", errors.Unavailable),
        ("StatusCode.INTERNAL", errors.InferenceFailed),
        (None, errors.InferenceFailed),
    ],
)
def test_tritonclients_status_text_is_read_as_the_grpc_code(
    status: str | None, kind: type[errors.RerankError]
) -> None:
    """tritonclient words a failed call's code as ``str(grpc.StatusCode)``; the code decides,
    whatever the message says."""
    error = translate(InferenceServerException("something went wrong", status), URL)
    assert type(error) is kind
