"""A long lock on the jobs table: a migration, or a DBA's ``LOCK TABLE ... IN ACCESS
EXCLUSIVE MODE`` held for a while.

Every statement of ours waits for a lock at most the queue's ``lock_timeout``: enqueue
then fails with `DatabaseBusy` having written nothing, a worker backs off without
crashing, and everything resumes once the lock is gone. On SQLite the analogue is another
connection holding the write lock (``BEGIN EXCLUSIVE``), waited for just as long.
The fast variants hold the lock for a few seconds with a lock timeout of half a second;
the soak variant holds it for 30 seconds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url

from jobqueue import AsyncJobQueue, DatabaseBusy, JobQueue, NewJob, Status, migrate
from jobqueue.drivers.engines import make_engine
from jobqueue.worker import Worker

from .conftest import status_counts, wait_for
from .test_pgbouncer import pgbouncer_port  # noqa: F401  (fixture: PgBouncer on loopback)

LOCK_TIMEOUT = 0.5


@contextmanager
def table_locked(url: str, table: str) -> Iterator[None]:
    """Another session holds the strongest lock on ``table`` while the block runs: on
    PostgreSQL ``ACCESS EXCLUSIVE`` (what ALTER TABLE takes), on SQLite the database's
    write lock (a transaction begun ``EXCLUSIVE``)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        assert u.database
        conn = sqlite3.connect(u.database, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            yield
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return
    dsn = u.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as holder:
        holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        yield
        holder.rollback()


@asynccontextmanager
async def table_locked_aside(url: str, table: str) -> AsyncIterator[None]:
    """`table_locked`, taken, held and given back by a thread of its own: taking the lock
    may wait for a statement of a worker on this event loop, which needs the loop to
    finish it (a blocking call here would wait for it for ever)."""
    taken, done = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def hold() -> None:
        try:
            with table_locked(url, table):
                taken.set()
                done.wait(300)
        except BaseException as exc:
            failed.append(exc)
            taken.set()

    holder = asyncio.create_task(asyncio.to_thread(hold))
    await asyncio.to_thread(taken.wait, 60)
    if failed:
        raise failed[0]
    try:
        yield
    finally:
        done.set()
        await holder


# -- enqueue -------------------------------------------------------------------------------


def test_enqueue_fails_clearly_within_the_lock_timeout(migrated: tuple[str, str]) -> None:
    url, table = migrated
    with JobQueue(url, table=table, lock_timeout=LOCK_TIMEOUT) as q:
        q.enqueue("image", {"before": True})
        with table_locked(url, table):
            for attempt in (
                lambda: q.enqueue("image", {"n": 1}),
                lambda: q.enqueue_many([NewJob(payload={"n": i}) for i in range(10)]),
            ):
                began = time.monotonic()
                with pytest.raises(DatabaseBusy) as caught:
                    attempt()
                waited = time.monotonic() - began
                assert LOCK_TIMEOUT * 0.8 <= waited < LOCK_TIMEOUT + 1.5, waited
                assert "nothing written" in caught.value.message
                assert "lock" in caught.value.hint
        # Nothing of the refused calls was written, and the queue works at once.
        assert status_counts(q) == {"pending": 1}
        q.enqueue("image", {"after": True})
        assert status_counts(q) == {"pending": 2}


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_async_enqueue_fails_clearly_on_both_drivers(
    postgres_url: str, table_name: str, driver: str
) -> None:
    migrate(postgres_url, table=table_name)
    url = make_url(postgres_url).set(drivername=f"postgresql+{driver}")
    q = AsyncJobQueue(url, table=table_name, lock_timeout=LOCK_TIMEOUT)
    try:
        await q.enqueue("image", {})
        with table_locked(postgres_url, table_name):
            began = time.monotonic()
            with pytest.raises(DatabaseBusy):
                await q.enqueue("image", {"n": 1})
            assert time.monotonic() - began < LOCK_TIMEOUT + 1.5
        assert len(await q.list(limit=10)) == 1
    finally:
        await q.close()


def test_the_lock_timeout_is_a_setting(monkeypatch: pytest.MonkeyPatch, postgres_url: str) -> None:
    """The queue's argument, else ``JOBQUEUE_LOCK_TIMEOUT``, else 5 s; refused when it is no
    number of seconds; not applied to an engine made by the caller."""
    from jobqueue import ConfigurationError

    def shown(**kwargs: Any) -> str:
        engine = make_engine(postgres_url, **kwargs)
        try:
            with engine.connect() as conn:
                return str(conn.exec_driver_sql("SHOW lock_timeout").scalar())
        finally:
            engine.dispose()

    monkeypatch.delenv("JOBQUEUE_LOCK_TIMEOUT", raising=False)
    assert shown() == "5s"
    assert shown(lock_timeout=0.25) == "250ms"
    monkeypatch.setenv("JOBQUEUE_LOCK_TIMEOUT", "2")
    assert shown() == "2s"
    monkeypatch.setenv("JOBQUEUE_LOCK_TIMEOUT", "3s")  # PostgreSQL's own units read too
    assert shown() == "3s"
    monkeypatch.setenv("JOBQUEUE_LOCK_TIMEOUT", "750ms")
    assert shown() == "750ms"
    monkeypatch.setenv("JOBQUEUE_LOCK_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="JOBQUEUE_LOCK_TIMEOUT"):
        shown()
    with pytest.raises(ConfigurationError, match="lock_timeout"):
        shown(lock_timeout=0)
    monkeypatch.delenv("JOBQUEUE_LOCK_TIMEOUT")
    engine = make_engine(postgres_url)
    try:
        with pytest.raises(ConfigurationError, match="not to one passed in"):
            JobQueue(engine, lock_timeout=1)
    finally:
        engine.dispose()


def test_behind_a_transaction_pooler_the_roles_setting_bounds_the_wait(
    postgres_url: str, table_name: str, request: pytest.FixtureRequest
) -> None:
    """Through PgBouncer (transaction mode) jobqueue sends no startup parameter, which
    PgBouncer would refuse; the setting of the role (here of a database of the test's own,
    which the server applies the same way) bounds the wait instead."""
    port: int = request.getfixturevalue("pgbouncer_port")
    admin = JobQueue(postgres_url)
    name = f"{make_url(postgres_url).database}_pooled_locks"

    def run(sql: str) -> None:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(sql)

    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run(f'CREATE DATABASE "{name}"')
    try:
        run(f"ALTER DATABASE \"{name}\" SET lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'")
        direct = make_url(postgres_url).set(database=name)
        migrate(direct, table=table_name)
        pooled = direct.set(host="127.0.0.1", port=port).update_query_dict(
            {"prepare_threshold": "none"}
        )
        with JobQueue(pooled, table=table_name) as q:
            with q.engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "500ms"
            q.enqueue("image", {})
            with table_locked(direct.render_as_string(hide_password=False), table_name):
                began = time.monotonic()
                with pytest.raises(DatabaseBusy):
                    q.enqueue("image", {})
                assert time.monotonic() - began < LOCK_TIMEOUT + 1.5
            assert status_counts(q) == {"pending": 1}
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# -- workers -------------------------------------------------------------------------------


async def _drain_through_a_lock(url: str, table: str, *, jobs: int, hold: float) -> None:
    """A worker is busy when the lock comes: it stops claiming, does not crash, and once the
    lock goes it drains every job, each run and completed exactly once."""
    with JobQueue(url, table=table) as setup:
        ids = {j.id for j in setup.enqueue_many([NewJob(kind="echo") for _ in range(jobs)])}
    runs: collections.Counter[Any] = collections.Counter()

    async def echo(job: Any, ctx: Any) -> dict[str, bool]:
        runs[job.id] += 1
        await asyncio.sleep(0.005)
        return {"ok": True}

    q = AsyncJobQueue(url, table=table, lock_timeout=LOCK_TIMEOUT)
    worker = Worker(q, {"echo": echo}, concurrency=4, lease=30, poll_interval=0.1)
    serving = asyncio.create_task(worker.run())
    try:
        await asyncio.to_thread(wait_for, lambda: sum(runs.values()) >= 20, 30, "first runs")
        async with table_locked_aside(url, table):
            # Handlers already running finish; after that nothing new may start.
            await asyncio.sleep(LOCK_TIMEOUT * 2 + 0.5)
            during = sum(runs.values())
            await asyncio.sleep(hold)
            assert sum(runs.values()) == during, "a job started while the table was locked"
            assert not serving.done(), "the worker ended during the lock"
        assert during < jobs
        await asyncio.to_thread(wait_for, lambda: set(runs) == ids, 60, "every job to run")
        with JobQueue(url, table=table) as check:
            await asyncio.to_thread(
                wait_for, lambda: status_counts(check) == {"completed": jobs}, 30, "completions"
            )
            assert {(await q.get(i)).status for i in list(ids)[:20]} == {Status.COMPLETED}
        assert set(runs.values()) == {1}, "a job ran twice"
    finally:
        worker.stop()
        await asyncio.wait_for(serving, 30)
        await q.close()


async def test_a_worker_waits_out_a_lock_and_drains_exactly_once(
    migrated: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, table = migrated
    with caplog.at_level(logging.WARNING, logger="jobqueue"):
        await _drain_through_a_lock(url, table, jobs=300, hold=2.0)
    assert "DatabaseBusy" in caplog.text, "the worker did not say why it waited"


@pytest.mark.soak
async def test_a_thirty_second_lock(migrated: tuple[str, str]) -> None:
    url, table = migrated
    await _drain_through_a_lock(url, table, jobs=3_000, hold=30.0)


# -- migrations ----------------------------------------------------------------------------


@contextmanager
def table_read(url: str, table: str) -> Iterator[None]:
    """A long transaction that read ``table`` (a report, a backup): it holds ``ACCESS
    SHARE``, which an ALTER TABLE must wait for."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as holder:
        holder.execute(f'SELECT count(*) FROM "{table}"')
        yield
        holder.rollback()


def _revision_and_index(url: str, table: str) -> tuple[str | None, bool]:
    from jobqueue.migrations import schema_state

    with JobQueue(url, table=table) as q, q.engine.connect() as conn:
        index = conn.exec_driver_sql(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{table}_done_idx"',)
        ).scalar()
    return schema_state(url, table=table).current, bool(index)


def test_a_migration_gives_up_whole_after_its_tries(postgres_url: str, table_name: str) -> None:
    """From 0005: 0006 builds an index (no conflict with a reader), 0007 alters the table
    (waits for the reader). The run gives up after its tries, and rolls back all of it,
    0006's index included."""
    migrate(postgres_url, table=table_name, revision="0005")
    with table_read(postgres_url, table_name):
        began = time.monotonic()
        with pytest.raises(DatabaseBusy, match="gave up after 2 tries") as caught:
            migrate(postgres_url, table=table_name, lock_timeout=0.2, attempts=2)
        assert time.monotonic() - began < 5
        assert "nothing was changed" in caught.value.message
        assert "pg_locks" in caught.value.hint
    assert _revision_and_index(postgres_url, table_name) == ("0005", False)
    migrate(postgres_url, table=table_name)
    from jobqueue.migrations import head_revision

    assert _revision_and_index(postgres_url, table_name) == (head_revision(), True)


def test_a_migration_retries_and_the_queue_keeps_moving(
    postgres_url: str, table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While a migration waits for a reader to finish, its short tries let the table's
    other users through in between (a DDL statement waiting for its lock holds up even
    reads queued behind it); once the reader is done the migration succeeds."""
    from jobqueue.migrations import head_revision

    migrate(postgres_url, table=table_name, revision="0005")
    failed: list[BaseException] = []

    def run() -> None:
        try:
            migrate(postgres_url, table=table_name, lock_timeout=0.2, attempts=20)
        except BaseException as exc:
            failed.append(exc)

    caplog.set_level(logging.WARNING, logger="jobqueue.migrations")
    engine = make_engine(postgres_url, lock_timeout=3)
    try:
        with table_read(postgres_url, table_name):
            migration = threading.Thread(target=run)
            migration.start()
            wait_for(lambda: "met a lock held too long" in caplog.text, 10, "a retry")
            for _ in range(5):
                began = time.monotonic()
                with engine.connect() as conn:
                    conn.exec_driver_sql(f'SELECT count(*) FROM "{table_name}"').scalar()
                assert time.monotonic() - began < 1.5, "a reader queued behind the migration"
            assert migration.is_alive()
        migration.join(60)
        assert not migration.is_alive() and not failed, failed
        assert _revision_and_index(postgres_url, table_name) == (head_revision(), True)
    finally:
        engine.dispose()
