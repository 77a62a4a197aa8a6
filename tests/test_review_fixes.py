"""Regression tests for core behaviours that were once wrong, each failing without its fix.

Like the behavioural suite they run on SQLite and PostgreSQL, sync and async (fixture ``q``).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from jobqueue import Completion, NewJob, PayloadError, Status
from jobqueue.operations import QueueLimits, check_json
from tests.conftest import Either


async def test_each_attempt_starts_with_fresh_progress(q: Either) -> None:
    """A released or retried job must not show the last attempt's progress."""
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
    """A heartbeat for an old attempt must not extend the new attempt's lease,
    even when the same worker claimed the job again."""
    await q.enqueue("image", {})
    (first,) = await q.claim("w")
    await q.release(first)
    (second,) = await q.claim("w")
    # The released attempt was given back: same number, a later claim.
    assert second.attempts == first.attempts
    assert second.started_at is not None and first.started_at is not None
    assert second.started_at > first.started_at
    assert await q.heartbeat_many("w", [first]) == set()
    assert await q.heartbeat_many("w", [first, second]) == {second.id}


async def test_lease_zero_is_refused_not_replaced_by_the_default(q: Either) -> None:
    """``lease=0`` was read as "no lease given" and silently became 30 s."""
    await q.enqueue("image", {})
    (job,) = await q.claim("w")
    with pytest.raises(PayloadError):
        await q.heartbeat(job, lease=0)
    with pytest.raises(PayloadError):
        await q.heartbeat_many("w", [job], lease=0)
    with pytest.raises(PayloadError):
        await q.heartbeat_many("w", [job], lease=-1)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sqlite_reads_do_not_wait_for_the_write_lock(q: Either, db_url: str) -> None:
    """Get, list, stats and wait begin deferred on SQLite, so a writer holding
    the lock (another process mid-transaction) does not hold up readers; writes still take
    the lock up front."""
    job = await q.enqueue("image", {})
    await q.cancel(job)
    writer = sqlite3.connect(make_url(db_url).database or "", isolation_level=None, timeout=60)
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert (await q.get(job.id)).status is Status.CANCELLED
        assert [j.id for j in await q.list()] == [job.id]
        assert [s.status for s in await q.stats()] == [Status.CANCELLED]
        assert (await q.wait(job.id, timeout=1)).id == job.id
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_driver_errors_do_not_carry_statement_parameters(q: Either) -> None:
    """An untranslated SQLAlchemy error lists the statement's parameters
    (payloads, results: user data) unless the engine hides them."""
    secret = "user-secret-prompt-4711"
    engine = q.target.engine
    with pytest.raises(DBAPIError) as caught:
        if q.is_async:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT no_such_column WHERE 1 = :x"), {"x": secret})
        else:
            with engine.connect() as conn:
                conn.execute(text("SELECT no_such_column WHERE 1 = :x"), {"x": secret})
    assert "no_such_column" in str(caught.value)
    assert secret not in str(caught.value)


async def test_list_and_prune_refuse_bad_arguments_with_payload_error(q: Either) -> None:
    """A naive ``since`` raised SQLAlchemy's StatementError and an unknown
    status in ``prune`` a bare ValueError; both are the caller's mistake (PayloadError)."""
    with pytest.raises(PayloadError, match="timezone-aware"):
        await q.list(since=datetime(2026, 1, 1))
    with pytest.raises(PayloadError, match="unknown status"):
        await q.prune(statuses=["bogus"])
    with pytest.raises(PayloadError, match="unknown status"):
        await q.list(status=["pending", "bogus"])
    job = await q.enqueue("image", {})
    assert [j.id for j in await q.list(since=datetime.now(UTC) - timedelta(hours=1))] == [job.id]


def test_check_json_returns_the_text_that_is_stored() -> None:
    """Payloads and results were encoded twice (once to check, once to
    write); check_json now hands its encoding to the statements."""
    assert check_json({"prompt": "ein Bär", "n": [1, 2.5]}, "payload", QueueLimits()) == (
        '{"prompt": "ein Bär", "n": [1, 2.5]}'
    )


async def test_json_values_round_trip_through_every_write(q: Either) -> None:
    """The single encoding is what reaches the database: values come back equal from
    enqueue, enqueue_many, complete and complete_many, on both databases."""
    value = {"prompt": "ein Bär 🐻", "zero": 0.0, "big": 2**70, "nested": {"a": [None, True]}}
    job = await q.enqueue("image", value)
    (other,) = await q.enqueue_many([NewJob(payload=[value, "x"])])
    assert (await q.get(job.id)).payload == value
    assert (await q.get(other.id)).payload == [value, "x"]
    first, second = await q.claim("w", limit=2)
    assert (await q.complete(first, value)).result == value
    assert await q.complete_many([Completion(second, [value])]) == {second.id}
    assert (await q.get(second.id)).result == [value]
