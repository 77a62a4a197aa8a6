"""Regression tests for the core review findings (notes/review.md), each failing without its fix.

Like the behavioural suite they run on SQLite and PostgreSQL, sync and async (fixture ``q``).
"""

from __future__ import annotations

import pytest

from jobqueue import PayloadError
from tests.conftest import Either


async def test_each_attempt_starts_with_fresh_progress(q: Either) -> None:
    """Review item 6: a released or retried job must not show the last attempt's progress."""
    await q.enqueue("image", {})
    (job,) = await q.claim("w")
    await q.set_progress(job, 60, "half")
    await q.release(job)
    (again,) = await q.claim("w")
    assert (again.progress, again.progress_message) == (0, None)

    await q.set_progress(again, 70, "almost")
    await q.fail(again, "boom", retry=True, retry_in=0)
    (third,) = await q.claim("w")
    assert (third.progress, third.progress_message) == (0, None)


async def test_heartbeat_many_is_fenced_by_attempt(q: Either) -> None:
    """Review item 5: a heartbeat for an old attempt must not extend the new attempt's lease,
    even when the same worker claimed the job again."""
    await q.enqueue("image", {})
    (first,) = await q.claim("w")
    await q.release(first)
    (second,) = await q.claim("w")
    assert second.attempts == first.attempts + 1
    assert await q.heartbeat_many("w", [first]) == set()
    assert await q.heartbeat_many("w", [first, second]) == {second.id}


async def test_lease_zero_is_refused_not_replaced_by_the_default(q: Either) -> None:
    """Review item 11: ``lease=0`` was read as "no lease given" and silently became 30 s."""
    await q.enqueue("image", {})
    (job,) = await q.claim("w")
    with pytest.raises(PayloadError):
        await q.heartbeat(job, lease=0)
    with pytest.raises(PayloadError):
        await q.heartbeat_many("w", [job], lease=0)
    with pytest.raises(PayloadError):
        await q.heartbeat_many("w", [job], lease=-1)
