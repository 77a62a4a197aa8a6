"""Regression tests for the core review findings (notes/review.md), each failing without its fix.

Like the behavioural suite they run on SQLite and PostgreSQL, sync and async (fixture ``q``).
"""

from __future__ import annotations

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
