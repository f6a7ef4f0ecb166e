"""Python client for the reranking server.

>>> from reranker_client import RerankClient
>>> with RerankClient("localhost:50051") as client:
...     client.rank("query", ["doc a", "doc b"], top_k=1, return_documents=True)
"""

from reranker_client._convert import ModelInfo
from reranker_client.client import AsyncRerankClient, RerankClient
from reranker_client.errors import (
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    RerankError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "AsyncRerankClient",
    "DeadlineExceededError",
    "InternalError",
    "InvalidArgumentError",
    "ModelInfo",
    "NotFoundError",
    "RerankClient",
    "RerankError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]
