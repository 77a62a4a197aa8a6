"""The one backoff rule: capped exponential growth, with full or equal jitter."""

from __future__ import annotations

from jobqueue import operations
from jobqueue.backoff import Backoff, ceiling, equal_jitter, full_jitter


def test_ceiling_doubles_from_base_and_stops_at_cap() -> None:
    assert [ceiling(n, 0.5, 3.0) for n in (0, 1, 2, 3, 4, 5)] == [0.5, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_stays_within_its_band() -> None:
    for attempt in range(1, 8):
        top = ceiling(attempt, 1.0, 10.0)
        for _ in range(200):
            assert 0.0 <= full_jitter(attempt, 1.0, 10.0) <= top
            assert top / 2 <= equal_jitter(attempt, 1.0, 10.0) <= top
            assert 0.0 <= operations.backoff_delay(attempt, 1.0, 10.0) <= top


def test_backoff_grows_per_failure_and_starts_over_after_reset() -> None:
    backoff = Backoff(base=1.0, cap=4.0)
    waits = [backoff.next() for _ in range(5)]
    for wait, top in zip(waits, (1.0, 2.0, 4.0, 4.0, 4.0), strict=True):
        assert top / 2 <= wait <= top
    backoff.reset()
    assert 0.5 <= backoff.next() <= 1.0
