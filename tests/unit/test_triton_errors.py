"""Triton says what went wrong mostly in message text: each message it sends, as Triton 2.51
and gRPC word them, maps to the error a caller sees."""

from __future__ import annotations

import pytest

from reranker.service import errors
from reranker.service.engine import classify

URL = "127.0.0.1:8001"


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", errors.DeadlineExceeded),
        ("", "Deadline Exceeded", errors.DeadlineExceeded),
        (
            "StatusCode.UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8001: "
            "Failed to connect to remote host: Connection refused",
            errors.Unavailable,
        ),
        ("", "Socket closed", errors.Unavailable),
        ("StatusCode.CANCELLED", "Locally cancelled by application!", errors.Unavailable),
        ("", "CANCELLED", errors.Unavailable),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'm' is not found", errors.Unavailable),
        (
            "StatusCode.UNAVAILABLE",
            "Request for unknown model: 'm' has no available versions",
            errors.Unavailable,
        ),
        (
            "StatusCode.INTERNAL",
            "Failed to process the request(s) for model 'm__encoder_0_0', message: Stub process "
            "'m__encoder_0_0' is not healthy.",
            errors.ModelRestarting,
        ),
        (
            "StatusCode.INTERNAL",
            "in ensemble 'm', inference failed: RuntimeError: out of memory",
            errors.InferenceFailed,
        ),
    ],
)
def test_each_triton_message_maps_to_its_error(
    status: str, message: str, kind: type[errors.RerankError]
) -> None:
    error = classify(status, message, URL)
    assert type(error) is kind
    assert message in str(error) or URL in str(error) or "deadline" in str(error)
