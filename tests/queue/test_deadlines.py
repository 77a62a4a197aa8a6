"""Start deadlines: a job not started by its ``start_by`` becomes ``expired`` and is never
handed to a handler (real databases, SQLite and PostgreSQL; sync and async queues)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from jobqueue import (
    AsyncJobQueue,
    Completion,
    Job,
    JobExpired,
    JobFailed,
    JobQueue,
    NewJob,
    PayloadError,
    Status,
)
from jobqueue.sql.manage import EXPIRY_BATCH
from tests.conftest import Either


def _key(q: Any, job_id: Any) -> Any:
    return job_id if q.dialect == "postgresql" else job_id.hex


def _past(q: Any) -> str:
    return "now() - interval '1 hour'" if q.dialect == "postgresql" else "'2000-01-01 00:00:00'"


def set_deadline(raw_sql: Callable[..., Any], table: str, q: Any, job: Job, value: str) -> None:
    """Write ``start_by = value`` (SQL) on ``job``'s row, as another client could."""
    raw_sql(f"UPDATE {table} SET start_by = {value} WHERE id = :id", id=_key(q, job.id))


async def test_a_deadline_is_stored_by_the_database_clock_or_as_given(q: Either) -> None:
    before = datetime.now(UTC)
    relative = await q.enqueue("image", {}, expires_in=60)
    at = datetime.now(UTC) + timedelta(minutes=5)
    absolute = await q.enqueue("image", {}, start_by=at)
    plain = await q.enqueue("image", {})
    assert relative.start_by is not None
    # The database clock plus 60 s (within the test's own clock's reach of it).
    assert relative.start_by - relative.created_at == pytest.approx(
        timedelta(seconds=60), abs=timedelta(seconds=1)
    )
    assert before - timedelta(seconds=5) < relative.start_by - timedelta(seconds=60)
    assert absolute.start_by == at
    assert plain.start_by is None
    for job in (relative, absolute, plain):
        assert (await q.get(job.id)).start_by == job.start_by


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"expires_in": 5, "start_by": datetime.now(UTC)}, "not both"),
        ({"start_by": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"expires_in": 0}, "expires_in must be between"),
        ({"expires_in": -1}, "expires_in must be between"),
        ({"expires_in": float("nan")}, "finite"),
        ({"expires_in": 10, "delay": 10}, "longer than delay"),
        (
            {
                "run_at": datetime(2030, 1, 1, tzinfo=UTC),
                "start_by": datetime(2029, 1, 1, tzinfo=UTC),
            },
            "later than run_at",
        ),
    ],
)
async def test_a_deadline_that_could_never_be_met_is_refused(
    q: Either, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        await q.enqueue("image", {}, **options)
    with pytest.raises(PayloadError, match=message):
        await q.enqueue_many([NewJob("image", {}), NewJob("image", {}, **options)])
    assert await q.list() == []


async def test_no_claim_takes_a_job_past_its_deadline_and_expire_moves_it(q: Either) -> None:
    late = await q.enqueue("image", {"n": "late"}, expires_in=0.2)
    later = await q.enqueue("image", {"n": "later"}, expires_in=3600)
    await asyncio.sleep(0.4)
    claimed = await q.claim("w", limit=10)
    assert [j.id for j in claimed] == [later.id]
    assert await q.claim("w", limit=10) == []
    assert (await q.get(late.id)).status is Status.PENDING  # nobody swept yet
    (expired,) = await q.expire()
    assert (expired.id, expired.status, expired.attempts) == (late.id, Status.EXPIRED, 0)
    assert expired.completed_at is not None and expired.started_at is None
    assert await q.expire() == []
    assert (await q.get(later.id)).status is Status.PROCESSING  # started in time: it runs


async def test_claims_within_limits_and_completing_claims_skip_a_job_past_its_deadline(
    q: Either,
) -> None:
    await q.set_limit("image", max_running=5)
    late = await q.enqueue("image", {}, expires_in=0.2)
    first = await q.enqueue("image", {})
    await asyncio.sleep(0.4)
    held = await q.claim("w", limit=5)  # obeys the limit: the claim within limits
    assert [j.id for j in held] == [first.id]
    await q.remove_limit("image")
    again = await q.enqueue("image", {}, expires_in=0.2)
    fresh = await q.enqueue("image", {})
    await asyncio.sleep(0.4)
    written, claimed = await q.complete_and_claim([Completion(held[0])], "w", limit=5)
    assert written == {first.id}
    assert [j.id for j in claimed] == [fresh.id]
    assert {j.id for j in await q.expire()} == {late.id, again.id}


async def test_wait_raises_job_expired(q: Either) -> None:
    job = await q.enqueue("image", {}, expires_in=0.1)
    await asyncio.sleep(0.3)
    await q.expire()
    with pytest.raises(JobExpired, match="expired: it was not started in time") as caught:
        await q.wait(job.id, interval=0.05, no_worker_after=None)
    assert caught.value.job_id == job.id
    assert "retry" in caught.value.hint
    with pytest.raises(JobFailed):  # a JobExpired is a JobFailed for wait_result's callers
        await q.wait_result(job.id, interval=0.05, no_worker_after=None)


async def test_retry_of_an_expired_job_runs_it_without_the_passed_deadline(q: Either) -> None:
    job = await q.enqueue("image", {}, expires_in=0.1, max_attempts=1)
    await asyncio.sleep(0.3)
    await q.expire()
    again = await q.retry(job.id)
    assert (again.status, again.start_by, again.completed_at) == (Status.PENDING, None, None)
    (held,) = await q.claim("w")
    assert held.id == job.id
    # A deadline still ahead survives a retry (of a cancelled job here).
    kept = await q.enqueue("image", {}, expires_in=3600)
    await q.cancel(kept.id)
    assert (await q.retry(kept.id)).start_by == kept.start_by


async def test_a_batch_carries_each_jobs_deadline(q: Either) -> None:
    at = datetime.now(UTC) + timedelta(hours=1)
    jobs = await q.enqueue_many(
        [
            NewJob("image", {}, expires_in=0.2),
            NewJob("image", {}, start_by=at),
            {"kind": "image", "payload": {}},
        ]
    )
    assert [j.start_by is not None for j in jobs] == [True, True, False]
    assert jobs[1].start_by == at
    for job in jobs:
        assert (await q.get(job.id)).start_by == job.start_by
    await asyncio.sleep(0.4)
    assert {j.id for j in await q.claim("w", limit=5)} == {jobs[1].id, jobs[2].id}
    assert [j.id for j in await q.expire()] == [jobs[0].id]


@pytest.mark.postgres
async def test_a_copied_batch_carries_each_jobs_deadline(
    postgres_url: str, table_name: str
) -> None:
    from jobqueue import migrate

    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        at = datetime.now(UTC) + timedelta(hours=1)
        batch = [NewJob("image", {"n": i}, expires_in=0.2 if i % 2 else None) for i in range(300)]
        batch[0] = NewJob("image", {}, start_by=at.astimezone(timezone(timedelta(hours=5))))  # type: ignore[arg-type]
        jobs = q.enqueue_many(batch)  # 300 jobs without keys: COPY
        assert jobs[0].start_by == at
        for job in (jobs[0], jobs[1], jobs[2]):
            assert q.get(job.id).start_by == job.start_by
        await asyncio.sleep(0.4)
        assert len(q.claim("w", limit=1000)) == 150
        assert len(q.expire()) == 150


async def test_the_sweep_takes_a_batch_at_a_time(
    queue: JobQueue, raw_sql: Callable[..., Any], migrated: tuple[str, str]
) -> None:
    queue.enqueue_many([NewJob("image", {}, expires_in=3600)] * (EXPIRY_BATCH + 5))
    raw_sql(f"UPDATE {migrated[1]} SET start_by = {_past(queue)}")
    assert len(queue.expire()) == EXPIRY_BATCH
    assert len(queue.expire()) == 5
    assert queue.expire() == []
    assert queue.claim("w") == []


async def test_a_job_whose_worker_vanished_after_its_deadline_is_not_claimed_again(
    q: Either, raw_sql: Callable[..., Any], migrated: tuple[str, str]
) -> None:
    job = await q.enqueue("image", {}, expires_in=3600, max_attempts=3)
    await q.claim("w1", lease=0.1)
    set_deadline(raw_sql, migrated[1], q, job, _past(q))
    await asyncio.sleep(0.3)  # the lease is over: normally claimable again
    assert await q.claim("w2") == []
    assert await q.reap() == [(job.id, Status.PENDING)]
    assert [j.id for j in await q.expire()] == [job.id]


async def test_rows_other_clients_write_with_deadlines_and_statuses(
    q: Either, raw_sql: Callable[..., Any], migrated: tuple[str, str]
) -> None:
    table = migrated[1]
    raw_sql(f"INSERT INTO {table} (kind, owner_id, start_by) VALUES ('image', 'past', {_past(q)})")
    raw_sql(f"INSERT INTO {table} (kind, owner_id, status) VALUES ('image', 'done', 'expired')")
    if q.dialect == "postgresql":
        # infinity: a deadline that never comes; -infinity: one long gone.
        raw_sql(
            f"INSERT INTO {table} (kind, owner_id, start_by) VALUES ('image', 'inf', 'infinity')"
        )
        raw_sql(
            f"INSERT INTO {table} (kind, owner_id, start_by) VALUES ('image', 'ninf', '-infinity')"
        )
    else:
        # Text that is no time: SQLite sorts it after every time (no deadline in reach).
        raw_sql(f"INSERT INTO {table} (kind, owner_id, start_by) VALUES ('image', 'inf', 'soon')")
        raw_sql(f"INSERT INTO {table} (kind, owner_id, start_by) VALUES ('image', 'ninf', '')")
    await q.enter_line()
    claimed = await q.claim("w", limit=10)
    assert [j.owner_id for j in claimed] == ["inf"]
    assert sorted(j.owner_id for j in await q.expire()) == ["ninf", "past"]
    (done,) = await q.list(owner_id="done")
    assert done.status is Status.EXPIRED and done.is_final
    assert {j.owner_id for j in await q.list(status="expired")} == {"done", "ninf", "past"}
    stats = {s.status: s.count for s in await q.stats()}
    assert stats[Status.EXPIRED] == 3
    with pytest.raises(Exception, match=r"(?i)check constraint"):
        raw_sql(f"INSERT INTO {table} (kind, status) VALUES ('image', 'lapsed')")


async def test_expired_jobs_are_pruned_like_other_finished_ones(q: Either) -> None:
    job = await q.enqueue("image", {}, expires_in=0.1)
    await asyncio.sleep(0.3)
    await q.expire()
    assert await q.prune(older_than=0, statuses=["expired"]) == 1
    assert await q.list() == []
    assert job.id


async def test_twins_share_expire(migrated: tuple[str, str]) -> None:
    url, table = migrated
    async with AsyncJobQueue(url, table=table) as aq:
        job = await aq.enqueue("image", {}, expires_in=0.1)
        await asyncio.sleep(0.3)
        assert [j.id for j in await aq.expire()] == [job.id]
