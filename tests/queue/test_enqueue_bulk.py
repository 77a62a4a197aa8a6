"""`enqueue_many` of large batches: PostgreSQL COPYs them and builds the returned jobs itself
instead of reading them back, so what it returns must be exactly what `get` reads, on every
database and driver; and COPY must keep what INSERT gave (NOTIFY, transactions, errors)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from jobqueue import (
    AsyncJobQueue,
    Job,
    JobQueue,
    NewJob,
    PayloadError,
    PermissionDenied,
    Status,
    migrate,
)
from jobqueue.drivers.engines import make_async_engine, make_engine
from jobqueue.operations import COPY_MIN_JOBS
from tests.conftest import Either

FIELDS = [f.name for f in dataclasses.fields(Job) if f.name != "extra"]

#: Numbers that jsonb gives back differently from how Python wrote them (1e+16 comes back
#: as an integer), and text that COPY's format must escape.
ODD_PAYLOADS: list[Any] = [
    None,
    {"big": 1e16, "huge": 1.5e300, "tiny": 1e-7, "neg": -0.0, "int": 2**70},
    {"tab\tnew\nline": "back\\slash \\N \\. \r", "ünï": "\u2124 ✓ \U0001d54f"},
    [1, (2, 3), {"a": [None, True, False]}],
    "just a string",
    12.5,
]


def batch(n: int = COPY_MIN_JOBS + 20) -> list[NewJob]:
    """Jobs with every option a caller may set, in every combination that matters."""
    berlin = timezone(timedelta(hours=1))
    jobs = [NewJob(kind="image", payload={"n": i}) for i in range(n)]
    jobs[: len(ODD_PAYLOADS)] = [NewJob(payload=p) for p in ODD_PAYLOADS]
    jobs[10] = NewJob(kind="video", queue="slow", priority=-7, max_attempts=9, owner_id="u\t1")
    jobs[11] = NewJob(delay=timedelta(seconds=90.1234567))
    jobs[12] = NewJob(delay=3)
    jobs[13] = NewJob(run_at=datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=berlin))
    jobs[14] = NewJob(run_at=datetime(2001, 1, 1, tzinfo=UTC))
    return jobs


async def assert_stored_as_returned(q: Either, returned: list[Job]) -> None:
    for job in returned:
        stored = await q.get(job.id)
        for name in FIELDS:
            assert getattr(job, name) == getattr(stored, name), (name, job.id)
        assert type(job.payload) is type(stored.payload)
        assert job == stored


@pytest.mark.parametrize("size", [COPY_MIN_JOBS - 1, COPY_MIN_JOBS + 20])
async def test_enqueue_many_returns_exactly_what_get_reads(q: Either, size: int) -> None:
    jobs = batch(size)
    returned = await q.enqueue_many(jobs)
    assert len(returned) == size
    assert [j.kind for j in returned] == [j.kind for j in jobs]
    await assert_stored_as_returned(q, returned)
    assert returned[13].run_at == datetime(2031, 5, 6, 6, 8, 9, 123456, tzinfo=UTC)
    assert returned[13].run_at.tzinfo is UTC
    assert timedelta(seconds=90) < returned[11].run_at - returned[11].created_at
    assert returned[11].run_at - returned[11].created_at < timedelta(seconds=91)
    assert all(j.status is Status.PENDING and j.attempts == 0 for j in returned)
    assert [j.id for j in returned] == sorted(j.id for j in returned)


async def test_a_large_batch_is_claimed_in_order(q: Either) -> None:
    returned = await q.enqueue_many([NewJob(payload={"n": i}) for i in range(COPY_MIN_JOBS)])
    claimed = await q.claim("w", limit=COPY_MIN_JOBS)
    assert [j.id for j in claimed] == [j.id for j in returned]
    listed = await q.list(limit=COPY_MIN_JOBS)
    assert [j.id for j in listed] == [j.id for j in reversed(returned)]


async def test_a_bad_job_in_a_large_batch_writes_nothing(q: Either) -> None:
    jobs = batch()
    jobs[-1] = NewJob(payload={"bad": {1, 2}})
    with pytest.raises(PayloadError, match="payload"):
        await q.enqueue_many(jobs)
    assert await q.list() == []


async def test_keys_in_a_large_batch_still_return_existing_jobs(q: Either) -> None:
    first = await q.enqueue("image", {"n": -1}, idempotency_key="k")
    jobs = batch()
    jobs[5] = NewJob(payload={"n": "again"}, idempotency_key="k")
    returned = await q.enqueue_many(jobs)
    assert returned[5] == first
    await assert_stored_as_returned(q, returned)


# -- PostgreSQL: every driver, transactions, NOTIFY, privileges ------------------------------


@pytest.fixture
def pg_table(postgres_url: str, table_name: str) -> str:
    migrate(postgres_url, table=table_name)
    return table_name


def _driver_url(url: str, driver: str) -> str:
    return url.replace("postgresql://", f"postgresql+{driver}://", 1)


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_every_async_driver_copies_what_get_reads(
    postgres_url: str, pg_table: str, driver: str
) -> None:
    async with AsyncJobQueue(_driver_url(postgres_url, driver), table=pg_table) as aq:
        returned = await aq.enqueue_many(batch())
        await assert_stored_as_returned(Either(aq), returned)


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_copy_joins_the_callers_transaction(
    postgres_url: str, pg_table: str, driver: str
) -> None:
    engine = make_async_engine(_driver_url(postgres_url, driver))
    async with AsyncJobQueue(engine, table=pg_table) as aq:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await aq.enqueue_many(batch(), connection=conn)
            await conn.rollback()
        assert await aq.list() == []
        async with engine.begin() as conn:
            returned = await aq.enqueue_many(batch(), connection=conn)
        assert len(await aq.list(limit=1000)) == len(returned)
    await engine.dispose()


def test_copy_joins_the_callers_sync_transaction(postgres_url: str, pg_table: str) -> None:
    engine = make_engine(postgres_url)
    with JobQueue(engine, table=pg_table) as sq:
        with engine.connect() as conn:
            sq.enqueue_many(batch(), connection=conn)
            conn.rollback()
        assert sq.list() == []
        with engine.begin() as conn:
            returned = sq.enqueue_many(batch(), connection=conn)
        assert [j.id for j in sq.list(limit=1000)] == [j.id for j in reversed(returned)]
    engine.dispose()


@pytest.mark.parametrize("driver", ["sync", "psycopg", "asyncpg"])
async def test_a_large_batch_notifies_listeners_once_per_queue(
    postgres_url: str, pg_table: str, driver: str
) -> None:
    listener = psycopg.connect(postgres_url, autocommit=True)
    try:
        listener.execute(f'LISTEN "{pg_table}"')
        jobs = batch()
        if driver == "sync":
            with JobQueue(postgres_url, table=pg_table) as sq:
                sq.enqueue_many(jobs)
        else:
            async with AsyncJobQueue(_driver_url(postgres_url, driver), table=pg_table) as aq:
                await aq.enqueue_many(jobs)
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=2)]
        assert sorted(got) == ["default", "slow"]
    finally:
        listener.close()


def test_a_role_that_may_not_copy_still_enqueues(postgres_url: str, pg_table: str) -> None:
    """Column grants only (as Supabase gives ``authenticated``): COPY would be refused, so
    the batch is INSERTed. Without ``turn``, ``limit_key`` and the limits table (where the
    owners' weights are) among them, the jobs are inserted unplaced and enter the line
    through the workers; with them, they take their turns at once."""
    role = f"{pg_table}_writer"
    admin = make_engine(postgres_url)
    columns = "id, queue, kind, payload, priority, max_attempts, owner_id, idempotency_key, run_at"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" NOLOGIN'))
        conn.execute(text(f'GRANT SELECT, INSERT ({columns}) ON "{pg_table}" TO "{role}"'))
    limited = make_engine(postgres_url)

    @sqlalchemy_event(limited)
    def _become(dbapi_connection: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute(f'SET ROLE "{role}"')
        dbapi_connection.commit()

    try:
        with JobQueue(limited, table=pg_table) as sq:
            returned = sq.enqueue_many(batch())
            assert [j.id for j in sq.list(limit=1000)] == [j.id for j in reversed(returned)]
            assert all(j.turn is None for j in returned)  # unplaced, due or not
            with pytest.raises(PermissionDenied, match="limit key"):
                sq.enqueue("image", {}, limit_key="api")
        with JobQueue(postgres_url, table=pg_table) as worker_side:
            # The jobs due enter the line (the database's clock is this host's).
            before = datetime.now(UTC)
            entered = worker_side.enter_line()
            after = datetime.now(UTC)
            placed = {j.id for j in worker_side.list(limit=1000) if j.turn is not None}
            assert entered == len(placed) >= len(returned) - 3  # 3 are due later
            assert {j.id for j in returned if j.run_at <= before} <= placed
            assert placed <= {j.id for j in returned if j.run_at <= after}
        with admin.begin() as conn:
            conn.execute(text(f'GRANT INSERT (turn, limit_key) ON "{pg_table}" TO "{role}"'))
            conn.execute(text(f'GRANT SELECT ON "{pg_table}_limits" TO "{role}"'))
        with JobQueue(limited, table=pg_table) as sq:
            job = sq.enqueue("image", {}, limit_key="api", owner_id="u\t1")
            assert job.turn is not None and job.limit_key == "api"
            assert sq.get(job.id) == job
    finally:
        limited.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


def sqlalchemy_event(engine: Any) -> Any:
    from sqlalchemy import event

    def register(fn: Any) -> Any:
        event.listen(engine, "connect", lambda dbapi_connection, _record: fn(dbapi_connection))
        return fn

    return register


def test_copy_into_a_named_schema(postgres_url: str, table_name: str) -> None:
    migrate(postgres_url, table=table_name, schema="jobqueue_bulk")
    with JobQueue(postgres_url, table=table_name, schema="jobqueue_bulk") as sq:
        returned = sq.enqueue_many(batch())
        assert all(sq.get(j.id) == j for j in returned)
    with make_engine(postgres_url).begin() as conn:
        conn.execute(text(f'DROP TABLE "jobqueue_bulk"."{table_name}"'))


def test_many_concurrent_batches(postgres_url: str, pg_table: str) -> None:
    async def main() -> None:
        async with AsyncJobQueue(postgres_url, table=pg_table) as aq:
            done = await asyncio.gather(*(aq.enqueue_many(batch()) for _ in range(4)))
            ids = {j.id for jobs in done for j in jobs}
            assert len(ids) == 4 * len(batch())
            assert len(await aq.list(limit=10_000)) == len(ids)

    asyncio.run(main())


@pytest.mark.parametrize("size", [COPY_MIN_JOBS - 1, COPY_MIN_JOBS])
def test_copy_is_used_from_the_threshold_on(
    postgres_url: str, pg_table: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobqueue.drivers.runner import SyncRunner

    copies: list[object] = []
    real = SyncRunner.copy
    monkeypatch.setattr(
        SyncRunner, "copy", lambda runner, step: copies.append(step) or real(runner, step)
    )
    with JobQueue(postgres_url, table=pg_table) as sq:
        sq.enqueue_many([NewJob(payload={"n": i}) for i in range(size)])
        sq.enqueue_many([NewJob(payload={"n": i}, idempotency_key=str(i)) for i in range(size)])
    assert len(copies) == (size >= COPY_MIN_JOBS)


@pytest.mark.parametrize("payload", ODD_PAYLOADS)
async def test_enqueue_returns_exactly_what_get_reads(q: Either, payload: Any) -> None:
    job = await q.enqueue("image", payload, owner_id="o", delay=timedelta(seconds=1.5))
    keyed = await q.enqueue("image", payload, idempotency_key="k", run_at=datetime.now(UTC))
    assert await q.enqueue("image", {}, idempotency_key="k") == keyed
    await assert_stored_as_returned(q, [job, keyed])


@pytest.mark.parametrize("driver", ["sync", "psycopg", "asyncpg"])
@pytest.mark.parametrize("size", [1, COPY_MIN_JOBS])
async def test_a_killed_connection_fails_one_enqueue_and_is_not_reused(
    postgres_url: str, pg_table: str, driver: str, size: int
) -> None:
    """One job and a COPY run on the driver connection itself: when the server drops it,
    the caller gets `DatabaseUnavailable` and the pool never hands that connection out
    again."""
    from jobqueue import DatabaseUnavailable

    jobs = [NewJob(payload={"n": i}) for i in range(size)]
    admin = make_engine(postgres_url)

    def kill(pid: int) -> None:
        with admin.begin() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    try:
        if driver == "sync":
            sq = JobQueue(make_engine(postgres_url, pool_size=1), table=pg_table)
            sq.enqueue_many(jobs)
            sq._spare.let_go()  # the pool's one connection is then the one the next takes
            with sq.engine.connect() as conn:
                pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            kill(pid)
            with pytest.raises(DatabaseUnavailable):
                sq.enqueue_many(jobs)
            assert len(sq.enqueue_many(jobs)) == size
            assert len(sq.list(limit=1000)) == 2 * size
            sq.close()
            sq.engine.dispose()
        else:
            url = _driver_url(postgres_url, driver)
            aq = AsyncJobQueue(make_async_engine(url, pool_size=1), table=pg_table)
            await aq.enqueue_many(jobs)
            await aq._spare.let_go()  # as above
            async with aq.engine.connect() as aconn:
                pid = (await aconn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
            kill(pid)
            with pytest.raises(DatabaseUnavailable):
                await aq.enqueue_many(jobs)
            assert len(await aq.enqueue_many(jobs)) == size
            assert len(await aq.list(limit=1000)) == 2 * size
            await aq.engine.dispose()
    finally:
        admin.dispose()


@pytest.mark.parametrize("driver", ["sync", "psycopg", "asyncpg"])
async def test_a_bad_job_in_a_copy_batch_writes_nothing_and_the_connection_goes_on(
    postgres_url: str, pg_table: str, driver: str
) -> None:
    jobs = batch()
    jobs[len(jobs) // 2] = NewJob(payload={"bad": float("nan")})
    if driver == "sync":
        with JobQueue(make_engine(postgres_url, pool_size=1), table=pg_table) as sq:
            with pytest.raises(PayloadError, match="not JSON-serialisable"):
                sq.enqueue_many(jobs)
            assert sq.list() == []
            assert len(sq.enqueue_many(batch())) == len(jobs)
            sq.engine.dispose()
        return
    engine = make_async_engine(_driver_url(postgres_url, driver), pool_size=1)
    async with AsyncJobQueue(engine, table=pg_table) as aq:
        with pytest.raises(PayloadError, match="not JSON-serialisable"):
            await aq.enqueue_many(jobs)
        assert await aq.list() == []
        assert len(await aq.enqueue_many(batch())) == len(jobs)
    await engine.dispose()


def test_a_bad_job_leaves_the_callers_transaction_usable(postgres_url: str, pg_table: str) -> None:
    jobs = batch()
    jobs[-1] = NewJob(priority=True)
    engine = make_engine(postgres_url)
    with JobQueue(engine, table=pg_table) as sq:
        with engine.begin() as conn:
            first = sq.enqueue("image", {"before": True}, connection=conn)
            with pytest.raises(PayloadError, match="priority"):
                sq.enqueue_many(jobs, connection=conn)
            sq.enqueue_many(batch(), connection=conn)
        assert sq.get(first.id) == first
        assert len(sq.list(limit=1000)) == 1 + len(jobs)
    engine.dispose()


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_a_cancelled_enqueue_gives_its_connection_back(
    postgres_url: str, pg_table: str, driver: str
) -> None:
    """An `enqueue` cancelled while its INSERT waits still returns its connection to the
    pool (a one-connection pool would otherwise be empty for good)."""
    engine = make_async_engine(
        _driver_url(postgres_url, driver), pool_size=1, max_overflow=0, pool_timeout=10
    )
    locker = make_engine(postgres_url)
    async with AsyncJobQueue(engine, table=pg_table) as aq:
        await aq.enqueue("image", {"n": 0})
        with locker.connect() as lock:
            lock.execute(text(f'LOCK TABLE "{pg_table}" IN ACCESS EXCLUSIVE MODE'))
            task = asyncio.create_task(aq.enqueue("image", {"n": 1}))
            await asyncio.sleep(0.5)  # the INSERT now waits for the lock
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            lock.rollback()
        job = await aq.enqueue("image", {"n": 2})
        assert (await aq.get(job.id)) == job
    await engine.dispose()
    locker.dispose()


def test_a_new_job_has_every_value_in_its_own_field() -> None:
    """The `Job` built for a new row without reading it back (`operations.jobs._new_job`,
    which passes the fields by position) holds each value in its own field: every value the
    row and the database clock give is distinct here, so no two fields can trade places
    unseen."""
    from jobqueue.operations import jobs
    from jobqueue.validation import QueueLimits

    row = NewJob(
        kind="video",
        payload={"prompt": "a fox"},
        queue="slow",
        priority=-7,
        max_attempts=9,
        owner_id="owner-1",
        idempotency_key="key-1",
        limit_key="limit-1",
    ).to_row(QueueLimits())
    created = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    updated = created + timedelta(seconds=1)
    run_at = created + timedelta(seconds=2)
    expected = Job(
        id=row["id"],
        queue="slow",
        kind="video",
        status=Status.PENDING,
        payload={"prompt": "a fox"},
        result=None,
        result_url=None,
        error=None,
        errors=[],
        progress=0,
        progress_message=None,
        priority=-7,
        attempts=0,
        max_attempts=9,
        run_at=run_at,
        locked_by=None,
        lease_expires_at=None,
        remote_task_id=None,
        owner_id="owner-1",
        idempotency_key="key-1",
        turn=12.5,
        limit_key="limit-1",
        created_at=created,
        started_at=None,
        completed_at=None,
        updated_at=updated,
        cost=None,
        cost_unit=None,
        reserved=None,
        start_by=None,
        unreadable=None,
    )
    for jsonb in (False, True):
        built = jobs._new_job(row, created, updated, run_at, 12.5, jsonb)
        for f in dataclasses.fields(Job):
            assert getattr(built, f.name) == getattr(expected, f.name), (f.name, jsonb)
        assert built == expected


async def test_a_large_batch_pauses_the_collector_and_resumes_it(
    q: Either, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`enqueue_many` of `GC_PAUSE_MIN_JOBS` jobs or more runs with the cyclic garbage
    collector paused, and resumes it after, also when a job is refused; a collector that
    was off stays off."""
    import gc

    from jobqueue import queue

    seen: list[bool] = []
    real = queue.new_job_rows

    def rows(jobs: Any, limits: Any) -> Any:
        seen.append(gc.isenabled())
        return real(jobs, limits)

    monkeypatch.setattr(queue, "new_job_rows", rows)
    large = [NewJob(payload={"n": i}) for i in range(queue.GC_PAUSE_MIN_JOBS)]
    assert gc.isenabled()
    assert len(await q.enqueue_many(large)) == len(large)
    assert len(await q.enqueue_many(large[:-1])) == len(large) - 1
    assert seen == [False, True] and gc.isenabled()
    with pytest.raises(PayloadError):
        await q.enqueue_many([*large, NewJob(priority=True)])
    assert gc.isenabled()
    gc.disable()
    try:
        await q.enqueue_many(large)
        assert not gc.isenabled()
    finally:
        gc.enable()
