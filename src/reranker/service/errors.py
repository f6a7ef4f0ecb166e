"""The one error taxonomy of the server, and its one mapping to gRPC and HTTP status codes."""

from __future__ import annotations

from http import HTTPStatus

import grpc


class RerankError(Exception):
    """An error a caller is told about. :data:`STATUS` gives its code on each transport."""

    @property
    def status(self) -> grpc.StatusCode:
        return grpc_status(self)


class InvalidArgument(RerankError):
    """The request is malformed; the message names the field."""


class FailedPrecondition(RerankError):
    """The request is valid but this deployment cannot serve it as configured."""


class ResourceExhausted(RerankError):
    """The server is at capacity: retry later."""

    # Seconds a caller should wait before it retries: HTTP's Retry-After, and gRPC's
    # ``retry-after`` trailing metadata. None: retrying the same call cannot succeed.
    retry_after_s: int | None = 1


class RequestTooLarge(ResourceExhausted):
    """The request is larger than the server accepts."""

    retry_after_s = None


class Unavailable(RerankError):
    """The inference backend cannot be reached or is not ready."""


class ModelRestarting(Unavailable):
    """A model's backend process died; the server is restarting it."""


class ModelNotLoaded(Unavailable):
    """Triton does not have the model loaded (yet, or any more)."""


class ModelLoading(Unavailable):
    """The called model is still loading (or waits for room to load): retry shortly."""

    retry_after_s: int | None = 1


class ModelLoadFailed(Unavailable):
    """The called model could not be loaded; it is tried again after a back-off."""

    retry_after_s: int | None = None


class Unauthenticated(RerankError):
    """The call carried no valid API key."""


class DeadlineExceeded(RerankError):
    """The call's deadline passed before inference finished."""


class InferenceFailed(RerankError):
    """The inference backend answered with an error."""


class NotFound(RerankError):
    """The caller asked for a route or method this server does not have."""


# The one table: every error class and its status on gRPC, on HTTP, and as Text Embeddings
# Inference names its error types (the `error_type` TEI's clients read: Validation,
# Overloaded, Backend, Tokenizer, Unhealthy, Empty). A subclass not listed takes its nearest
# listed ancestor's row.
STATUS: dict[type[RerankError], tuple[grpc.StatusCode, HTTPStatus, str]] = {
    RerankError: (grpc.StatusCode.INTERNAL, HTTPStatus.INTERNAL_SERVER_ERROR, "Backend"),
    InvalidArgument: (grpc.StatusCode.INVALID_ARGUMENT, HTTPStatus.BAD_REQUEST, "Validation"),
    FailedPrecondition: (
        grpc.StatusCode.FAILED_PRECONDITION,
        HTTPStatus.UNPROCESSABLE_ENTITY,
        "Validation",
    ),
    ResourceExhausted: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        HTTPStatus.TOO_MANY_REQUESTS,
        "Overloaded",
    ),
    RequestTooLarge: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        "Validation",
    ),
    Unavailable: (grpc.StatusCode.UNAVAILABLE, HTTPStatus.SERVICE_UNAVAILABLE, "Unhealthy"),
    Unauthenticated: (grpc.StatusCode.UNAUTHENTICATED, HTTPStatus.UNAUTHORIZED, "Validation"),
    DeadlineExceeded: (grpc.StatusCode.DEADLINE_EXCEEDED, HTTPStatus.GATEWAY_TIMEOUT, "Backend"),
    InferenceFailed: (grpc.StatusCode.INTERNAL, HTTPStatus.INTERNAL_SERVER_ERROR, "Backend"),
    NotFound: (grpc.StatusCode.UNIMPLEMENTED, HTTPStatus.NOT_FOUND, "Validation"),
}


def _row(error: RerankError) -> tuple[grpc.StatusCode, HTTPStatus, str]:
    for kind in type(error).__mro__:
        row = STATUS.get(kind)
        if row is not None:
            return row
    raise TypeError(f"{type(error).__name__} is not a RerankError")  # unreachable


def grpc_status(error: RerankError) -> grpc.StatusCode:
    """The gRPC status code a caller sees for ``error``."""
    return _row(error)[0]


def http_status(error: RerankError) -> HTTPStatus:
    """The HTTP status a caller sees for ``error``."""
    return _row(error)[1]


def tei_error_type(error: RerankError) -> str:
    """The ``error_type`` Text Embeddings Inference would give ``error``."""
    return _row(error)[2]


def retry_after(error: RerankError) -> str | None:
    """The retry hint of ``error`` as both transports carry it (whole seconds), if any."""
    seconds = getattr(error, "retry_after_s", None)
    return None if seconds is None else str(seconds)
