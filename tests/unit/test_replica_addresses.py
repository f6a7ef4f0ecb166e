"""Which replicas a Triton URL names, for the loads and unloads that must reach each."""

from __future__ import annotations

import pytest

from reranker.service.engine import grpc_target, replica_addresses


@pytest.mark.parametrize(
    ("url", "replicas"),
    [
        ("127.0.0.1:8001", ["127.0.0.1:8001"]),
        ("10.0.0.1:8001,10.0.0.2:8001", ["10.0.0.1:8001", "10.0.0.2:8001"]),
        ("ipv4:10.0.0.1:8001,10.0.0.2:8001", ["10.0.0.1:8001", "10.0.0.2:8001"]),
        ("ipv6:[::1]:8001,[::1]:8002", ["[::1]:8001", "[::1]:8002"]),
        ("10.0.0.1:8001, 10.0.0.2:8001", ["10.0.0.1:8001", "10.0.0.2:8001"]),
        ("dns:///triton:8001", ["dns:///triton:8001"]),
    ],
)
def test_replicas_named_one_by_one(url: str, replicas: list[str]) -> None:
    assert replica_addresses(url) == replicas


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("127.0.0.1:8001", "127.0.0.1:8001"),
        ("10.0.0.1:8001, 10.0.0.2:8001", "ipv4:10.0.0.1:8001,10.0.0.2:8001"),
        ("[::1]:8001,[::1]:8002", "ipv6:[::1]:8001,[::1]:8002"),
        ("ipv4:10.0.0.1:8001,10.0.0.2:8001", "ipv4:10.0.0.1:8001,10.0.0.2:8001"),
        ("dns:///triton:8001", "dns:///triton:8001"),
    ],
)
def test_round_robin_spreads_over_the_same_replicas(url: str, target: str) -> None:
    assert grpc_target(url) == target
