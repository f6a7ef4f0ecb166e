"""Which replicas a Triton URL names, for the loads and unloads that must reach each."""

from __future__ import annotations

import pytest

from reranker.service.engine import replica_addresses


@pytest.mark.parametrize(
    ("url", "replicas"),
    [
        ("127.0.0.1:8001", ["127.0.0.1:8001"]),
        ("10.0.0.1:8001,10.0.0.2:8001", ["10.0.0.1:8001", "10.0.0.2:8001"]),
        ("ipv4:10.0.0.1:8001,10.0.0.2:8001", ["10.0.0.1:8001", "10.0.0.2:8001"]),
        ("ipv6:[::1]:8001,[::1]:8002", ["[::1]:8001", "[::1]:8002"]),
        ("dns:///triton:8001", ["dns:///triton:8001"]),
    ],
)
def test_replicas_named_one_by_one(url: str, replicas: list[str]) -> None:
    assert replica_addresses(url) == replicas
