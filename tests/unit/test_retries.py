"""The engine's retry schedule toward Triton: an unreachable Triton fails fast, a replica
that does not have the model loaded is retried for a window of time, and no retry starts
too close to the call's deadline."""

from __future__ import annotations

from reranker.service.engine import Retries
from reranker.service.errors import InferenceFailed, ModelNotLoaded, ModelRestarting, Unavailable


def test_pauses_double_from_50_ms_to_200_ms() -> None:
    retries = Retries(deadline=100.0, not_loaded_until=100.0)
    pauses = [retries.pause(ModelNotLoaded, now=0.0) for _ in range(5)]
    assert pauses == [0.05, 0.1, 0.2, 0.2, 0.2]


def test_an_unreachable_triton_is_tried_three_times() -> None:
    retries = Retries(deadline=100.0, not_loaded_until=100.0)
    assert [retries.pause(Unavailable, now=0.0) for _ in range(3)] == [0.05, 0.1, None]


def test_unreachable_tries_are_counted_apart_from_a_model_not_loaded() -> None:
    """A stopping replica answers "unknown model" a while, then stops answering: the first
    unreachable answer after many of the other kind is still retried."""
    retries = Retries(deadline=100.0, not_loaded_until=100.0)
    for _ in range(6):
        assert retries.pause(ModelNotLoaded, now=0.0) is not None
    assert retries.pause(Unavailable, now=0.0) == 0.2
    assert retries.pause(Unavailable, now=0.0) == 0.2
    assert retries.pause(Unavailable, now=0.0) is None


def test_other_failures_are_not_retried() -> None:
    for error in (InferenceFailed, ModelRestarting):
        assert Retries(deadline=100.0, not_loaded_until=100.0).pause(error, now=0.0) is None


def test_a_model_not_loaded_is_retried_until_the_next_try_would_start_past_the_window() -> None:
    assert Retries(100.0, not_loaded_until=1.0).pause(ModelNotLoaded, now=0.96) is None
    assert Retries(100.0, not_loaded_until=1.0).pause(ModelNotLoaded, now=0.9) == 0.05


def test_no_retry_begins_within_50_ms_of_the_deadline() -> None:
    for error in (Unavailable, ModelNotLoaded):
        assert Retries(deadline=1.0, not_loaded_until=2.0).pause(error, now=0.85) == 0.05
        assert Retries(deadline=1.0, not_loaded_until=2.0).pause(error, now=0.91) is None


def test_a_two_second_window_tries_every_replica_of_a_pair_many_times() -> None:
    """A stopping replica answers "unknown model" at once for a second or two; round robin
    alternates, so the window must allow many attempts, not three."""
    retries, now, attempts = Retries(deadline=30.0, not_loaded_until=2.0), 0.0, 1
    while (pause := retries.pause(ModelNotLoaded, now=now)) is not None:
        now += pause
        attempts += 1
    assert attempts >= 10
    assert now <= 2.0
