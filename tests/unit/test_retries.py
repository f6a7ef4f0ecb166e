"""The engine's retry schedule toward Triton: an unreachable Triton fails fast, a replica
that does not have the model loaded is retried for a window of time."""

from __future__ import annotations

from reranker.service.engine import retry_pause
from reranker.service.errors import InferenceFailed, ModelNotLoaded, ModelRestarting, Unavailable


def test_pauses_double_from_50_ms_to_200_ms() -> None:
    pauses = [retry_pause(ModelNotLoaded, n, not_loaded_until=100.0, now=0.0) for n in range(1, 6)]
    assert pauses == [0.05, 0.1, 0.2, 0.2, 0.2]


def test_an_unreachable_triton_is_tried_three_times() -> None:
    pauses = [retry_pause(Unavailable, n, not_loaded_until=100.0, now=0.0) for n in range(1, 4)]
    assert pauses == [0.05, 0.1, None]


def test_other_failures_are_not_retried() -> None:
    for error in (InferenceFailed, ModelRestarting):
        assert retry_pause(error, 1, not_loaded_until=100.0, now=0.0) is None


def test_a_model_not_loaded_is_retried_until_the_next_try_would_start_past_the_window() -> None:
    assert retry_pause(ModelNotLoaded, 1, not_loaded_until=1.0, now=0.96) is None
    assert retry_pause(ModelNotLoaded, 1, not_loaded_until=1.0, now=0.9) == 0.05


def test_a_two_second_window_tries_every_replica_of_a_pair_many_times() -> None:
    """A stopping replica answers "unknown model" at once for a second or two; round robin
    alternates, so the window must allow many attempts, not three."""
    now, attempts = 0.0, 1
    while (
        pause := retry_pause(ModelNotLoaded, attempts, not_loaded_until=2.0, now=now)
    ) is not None:
        now += pause
        attempts += 1
    assert attempts >= 10
    assert now <= 2.0
