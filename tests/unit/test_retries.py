"""The engine's retry schedule toward Triton: a window of time, not a count of attempts."""

from __future__ import annotations

from reranker.service.engine import retry_pause


def test_pauses_double_from_50_ms_to_200_ms() -> None:
    pauses = [retry_pause(attempt, retry_until=100.0, now=0.0) for attempt in range(1, 6)]
    assert pauses == [0.05, 0.1, 0.2, 0.2, 0.2]


def test_retries_stop_where_the_next_would_start_past_the_window() -> None:
    assert retry_pause(1, retry_until=1.0, now=0.96) is None
    assert retry_pause(1, retry_until=1.0, now=0.9) == 0.05


def test_a_two_second_window_tries_every_replica_of_a_pair_many_times() -> None:
    """A stopping replica answers at once for a second or two; round robin alternates, so
    the attempts a window allows must be many, not three."""
    now, attempts = 0.0, 1
    while (pause := retry_pause(attempts, retry_until=2.0, now=now)) is not None:
        now += pause
        attempts += 1
    assert attempts >= 10
    assert now <= 2.0
