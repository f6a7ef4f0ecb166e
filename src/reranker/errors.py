"""The one error taxonomy of the server, and its one mapping to gRPC status codes."""

from __future__ import annotations

import grpc


class RerankError(Exception):
    """An error a caller is told about, with the gRPC status it maps to."""

    status = grpc.StatusCode.INTERNAL


class InvalidArgument(RerankError):
    """The request is malformed; the message names the field."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(RerankError):
    """The request is valid but this deployment cannot serve it as configured."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(RerankError):
    """The server is at capacity, or the request is larger than allowed."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(RerankError):
    """The inference backend cannot be reached or is not ready."""

    status = grpc.StatusCode.UNAVAILABLE


class ModelRestarting(Unavailable):
    """A model's backend process died; the server is restarting it."""


class Unauthenticated(RerankError):
    """The call carried no valid API key."""

    status = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(RerankError):
    """The call's deadline passed before inference finished."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class InferenceFailed(RerankError):
    """The inference backend answered with an error."""

    status = grpc.StatusCode.INTERNAL
