"""Exceptions raised by the client: one base class, one subclass per gRPC status."""

from __future__ import annotations

import grpc


class RerankError(Exception):
    """A call to the reranking server failed.

    Attributes:
        code: The gRPC status code the server (or the channel) answered with.
        details: The server's message.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(RerankError):
    """The request was malformed: the message names the field."""


class NotFoundError(RerankError):
    """A named resource does not exist."""


class ResourceExhaustedError(RerankError):
    """The server is at capacity or the request exceeds a size limit."""


class DeadlineExceededError(RerankError):
    """The call did not finish within its timeout."""


class UnavailableError(RerankError):
    """The server (or its inference backend) cannot be reached right now."""


class UnauthenticatedError(RerankError):
    """The call carried no valid credentials."""


class InternalError(RerankError):
    """The server failed unexpectedly."""


_BY_CODE: dict[grpc.StatusCode, type[RerankError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(error: grpc.RpcError) -> RerankError:
    """Turns a gRPC error into the matching :class:`RerankError` subclass."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    return _BY_CODE.get(code, RerankError)(code, details)
