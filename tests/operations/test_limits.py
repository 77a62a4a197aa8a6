"""Limits enforced by the database: caps, rates, pauses, a job held back by its provider.

Every test runs on SQLite and PostgreSQL, through the sync and the async queue. The races
between worker processes are in tests/reliability/test_scheduling.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from jobqueue import NewJob, PayloadError
from jobqueue.errors import LeaseLost

from ..conftest import Either


async def test_a_key_cap_holds_across_claims_and_frees_as_jobs_finish(q: Either) -> None:
    await q.set_limit("image", max_running=2)
    await q.enqueue_many([NewJob(kind="image") for _ in range(5)])
    other = await q.enqueue(kind="text")
    first = await q.claim("w1", limit=10, kinds=None)
    assert sorted(j.kind for j in first) == ["image", "image", "text"]
    assert {j.id for j in first} >= {other.id}
    assert await q.claim("w2", limit=10) == []
    done = next(j for j in first if j.kind == "image")
    await q.complete(done, {"ok": True})
    (again,) = await q.claim("w2", limit=10)
    assert again.kind == "image"


async def test_a_limit_key_given_at_enqueue_overrides_the_kind(q: Either) -> None:
    await q.set_limit("provider-a", max_running=1)
    await q.enqueue_many([NewJob(kind="image", limit_key="provider-a") for _ in range(3)])
    await q.enqueue_many([NewJob(kind="image", limit_key="provider-b") for _ in range(3)])
    claimed = await q.claim("w", limit=10)
    keys = sorted(j.limit_key for j in claimed)
    assert keys == ["provider-a", "provider-b", "provider-b", "provider-b"]


async def test_a_per_owner_cap_lets_other_owners_through(q: Either) -> None:
    await q.set_limit("default", scope="queue", max_running_per_owner=2)
    await q.enqueue_many([NewJob(owner_id="A") for _ in range(10)])
    await q.enqueue_many([NewJob(owner_id="B") for _ in range(10)])
    claimed = await q.claim("w", limit=10)
    assert sorted(j.owner_id for j in claimed) == ["A", "A", "B", "B"]
    assert (await q.list_limits())[0].running == 4


async def test_a_rate_limits_starts_per_period_without_spending_attempts(q: Either) -> None:
    await q.set_limit("image", rate=3, per=1.5)
    await q.enqueue_many([NewJob(kind="image") for _ in range(5)])
    first = await q.claim("w", limit=10)
    assert len(first) == 3
    assert await q.claim("w", limit=10) == []
    waiting = await q.list(status="pending")
    assert all(j.attempts == 0 for j in waiting)
    await asyncio.sleep(1.6)
    assert len(await q.claim("w", limit=10)) == 2


async def test_a_paused_queue_keeps_its_jobs_pending_until_resumed(q: Either) -> None:
    await q.enqueue_many([NewJob() for _ in range(3)])
    held = await q.claim("w")
    row = await q.pause("default", reason="maintenance")
    assert row.paused and row.paused_until is None and row.pause_reason == "maintenance"
    assert await q.claim("w", limit=10) == []
    await q.complete(held[0], {"ok": True})  # running jobs finish
    row = await q.resume("default")
    assert not row.paused
    assert len(await q.claim("w", limit=10)) == 2


async def test_a_pause_of_a_key_leaves_other_keys_running_and_ends_by_itself(q: Either) -> None:
    await q.enqueue_many([NewJob(kind="image") for _ in range(2)])
    text_job = await q.enqueue(kind="text")
    # Long enough for a loaded machine to claim inside it; then wait until it has ended.
    row = await q.pause("image", scope="key", duration=2.5)
    assert row.paused and row.paused_until is not None
    (claimed,) = await q.claim("w", limit=10)
    assert claimed.id == text_job.id
    await asyncio.sleep((row.paused_until - datetime.now(UTC)).total_seconds() + 0.2)
    assert len(await q.claim("w", limit=10)) == 2


async def test_retry_later_gives_the_attempt_back_and_pauses_the_key(q: Either) -> None:
    await q.enqueue_many([NewJob(kind="image") for _ in range(2)])
    (held,) = await q.claim("w")
    back = await q.retry_later(held, 2.5, "429 from the provider")
    assert back.status == "pending" and back.attempts == held.attempts - 1
    assert back.run_at > held.started_at
    (row,) = [r for r in await q.list_limits() if r.name == "image"]
    assert row.paused and row.pause_reason == "429 from the provider"
    assert row.paused_until is not None
    assert await q.claim("w", limit=10) == []  # the other image job waits too
    await asyncio.sleep((row.paused_until - datetime.now(UTC)).total_seconds() + 0.2)
    assert len(await q.claim("w", limit=10)) == 2
    with pytest.raises(LeaseLost):
        await q.retry_later(held, 1.0, "too late")


async def test_removing_the_last_limit_returns_to_the_plain_claim(q: Either) -> None:
    await q.set_limit("image", max_running=1)
    await q.enqueue_many([NewJob() for _ in range(3)])
    assert len(await q.claim("w", limit=10)) == 1
    assert await q.remove_limit("image")
    assert len(await q.claim("w", limit=10)) == 2
    assert not await q.remove_limit("image")


async def test_set_limit_changes_only_what_it_is_given(q: Either) -> None:
    await q.set_limit("image", max_running=4, rate=10, per=timedelta(minutes=1))
    row = await q.set_limit("image", max_running_per_owner=2)
    assert (row.max_running, row.max_running_per_owner, row.rate, row.per_seconds) == (
        4,
        2,
        10,
        60.0,
    )
    row = await q.set_limit("image", max_running=None)
    assert row.max_running is None and row.in_force


@pytest.mark.parametrize(
    ("scope", "settings", "message"),
    [
        ("key", {"rate": 5}, "period"),
        ("key", {"max_running": 0}, "max_running"),
        ("key", {"weight": 2}, "owner"),
        ("owner", {"max_running": 2}, "weight"),
        ("galaxy", {"max_running": 2}, "scope"),
        ("key", {"per": -1, "rate": 1}, "per"),
    ],
)
async def test_bad_settings_are_refused_with_a_hint(
    q: Either, scope: str, settings: dict[str, object], message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        await q.set_limit("x", scope=scope, **settings)
    assert await q.list_limits() == []
