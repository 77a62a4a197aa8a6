"""The completer, the one writer of outcomes, against a real database made to fail: a
trigger refuses the write (a database error, not a refusal of ours), so every kind of
outcome meets the same rule — retried with backoff while the worker serves, given up only
while it stops (at once after an immediate stop, after the grace period and a lease after a
graceful one) — and a database that goes away altogether."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, RetryLater, Status
from jobqueue.worker import Worker, WorkerContext
from tests.worker.conftest import eventually, messages, run_in_background

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@contextlib.asynccontextmanager
async def refused_updates(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], when: str
) -> AsyncIterator[None]:
    """While the block runs, the database refuses every UPDATE of a job row for which
    ``when`` (on ``OLD`` and ``NEW``) holds, with an error of its own."""
    table = jq.table_name
    name = f"{table}_refuse"
    if jq.dialect == "postgresql":
        create = [
            f'CREATE FUNCTION "{name}"() RETURNS trigger LANGUAGE plpgsql AS '
            "$$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$",
            f'CREATE TRIGGER "{name}" BEFORE UPDATE ON "{table}" FOR EACH ROW '
            f'WHEN ({when}) EXECUTE FUNCTION "{name}"()',
        ]
        drop = [f'DROP TRIGGER "{name}" ON "{table}"', f'DROP FUNCTION "{name}"()']
    else:
        create = [
            f'CREATE TRIGGER "{name}" BEFORE UPDATE ON "{table}" FOR EACH ROW WHEN {when} '
            "BEGIN SELECT RAISE(ABORT, 'the disk is full'); END"
        ]
        drop = [f'DROP TRIGGER "{name}"']
    # From a thread: on SQLite the statement may wait for a write of the worker, which
    # needs this event loop to finish.
    for sql in create:
        await asyncio.to_thread(raw_sql, sql)
    try:
        yield
    finally:
        for sql in drop:
            await asyncio.to_thread(raw_sql, sql)


COMPLETING = "OLD.status = 'processing' AND NEW.status = 'completed'"


async def echo(job: Job, ctx: WorkerContext) -> str:
    return "hi"


# -- retried while serving --------------------------------------------------------------------


async def test_a_completion_the_database_refuses_is_retried_until_written(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("echo", {})
    worker = Worker(jq, {"echo": echo}, lease=5, listen=False)
    async with refused_updates(jq, raw_sql, COMPLETING):
        task = asyncio.create_task(worker.run_until_idle())
        await eventually(lambda: messages(caplog).count("completing 1 jobs failed") >= 2)
        assert "the disk is full" in messages(caplog)
        assert (await jq.get(job.id)).status is Status.PROCESSING
    assert await asyncio.wait_for(task, 15) == 1
    done = await jq.get(job.id)
    assert (done.status, done.result, done.attempts) == (Status.COMPLETED, "hi", 1)
    assert "giving up" not in messages(caplog)


async def test_a_failure_the_database_refuses_is_retried_until_written(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("boom", {}, max_attempts=1)

    async def boom(job: Job, ctx: WorkerContext) -> None:
        raise RuntimeError("handler exploded")

    worker = Worker(jq, {"boom": boom}, lease=5, listen=False)
    async with refused_updates(jq, raw_sql, "NEW.status = 'failed'"):
        task = asyncio.create_task(worker.run_until_idle())
        await eventually(
            lambda: messages(caplog).count(f"Job {job.id}: recording its failure failed") >= 2
        )
        assert (await jq.get(job.id)).status is Status.PROCESSING
    assert await asyncio.wait_for(task, 15) == 1
    done = await jq.get(job.id)
    assert (done.status, done.error) == (Status.FAILED, "RuntimeError: handler exploded")


async def test_a_release_the_database_refuses_is_retried_until_the_job_is_back(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """A job released on shutdown goes back to the queue at once, even when the first
    tries fail, instead of waiting for its lease to run out."""
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("slow", {})
    started = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = Worker(jq, {"slow": slow}, lease=30, grace_period=0, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 10)
    async with refused_updates(jq, raw_sql, "NEW.status = 'pending'"):
        worker.stop()
        await eventually(lambda: messages(caplog).count(f"Job {job.id}: releasing it failed") >= 2)
    await asyncio.wait_for(task, 15)
    released = await jq.get(job.id)
    assert (released.status, released.attempts, released.locked_by) == (Status.PENDING, 0, None)


async def test_a_hold_back_the_database_refuses_is_retried_until_written(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("busy", {})

    async def busy(job: Job, ctx: WorkerContext) -> None:
        raise RetryLater(30, reason="provider busy")

    worker = Worker(jq, {"busy": busy}, lease=5, listen=False)
    async with refused_updates(jq, raw_sql, "NEW.status = 'pending'"):
        task = asyncio.create_task(worker.run_until_idle())
        await eventually(
            lambda: messages(caplog).count(f"Job {job.id}: holding it back failed") >= 2
        )
        assert (await jq.get(job.id)).status is Status.PROCESSING
        assert await jq.list_limits() == []  # the pause is written with the job, or not at all
    assert await asyncio.wait_for(task, 15) == 1
    held = await jq.get(job.id)
    assert (held.status, held.attempts) == (Status.PENDING, 0)
    assert [(x.name, x.paused) for x in await jq.list_limits()] == [("busy", True)]
    assert "giving up" not in messages(caplog)


# -- given up only while stopping -------------------------------------------------------------


async def test_failing_writes_are_given_up_at_once_on_an_immediate_stop(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("echo", {})
    worker = Worker(jq, {"echo": echo}, lease=30, grace_period=60, listen=False)
    async with refused_updates(jq, raw_sql, COMPLETING):
        task = await run_in_background(worker)
        await eventually(lambda: "completing 1 jobs failed" in messages(caplog))
        worker.stop(immediate=True)
        await asyncio.wait_for(task, 5)
    assert "giving up completing 1 jobs (" in messages(caplog)
    assert "the reaper will return them" in messages(caplog)
    # Not written: the job is still held, and its lease returns it to the queue.
    left = await jq.get(job.id)
    assert (left.status, left.locked_by) == (Status.PROCESSING, worker.worker_id)


async def test_failing_writes_are_given_up_after_the_grace_period_and_a_lease(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    await jq.enqueue("echo", {})
    worker = Worker(jq, {"echo": echo}, lease=1.0, grace_period=0.5, listen=False)
    async with refused_updates(jq, raw_sql, COMPLETING):
        task = await run_in_background(worker)
        await eventually(lambda: "completing 1 jobs failed" in messages(caplog))
        stopped_at = time.monotonic()
        worker.stop()
        await asyncio.wait_for(task, 15)
        took = time.monotonic() - stopped_at
    assert 1.4 <= took < 10, took
    assert "giving up completing 1 jobs (" in messages(caplog)


# -- a database that goes away ----------------------------------------------------------------


@pytest.mark.postgres
async def test_the_worker_survives_a_database_outage(
    postgres_url: str,
    jobqueue_postgres_server_url: str,
    table_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refuse all connections to the test database for a while (and kill the open ones):
    the worker logs, backs off, and carries on when the database is back."""
    from sqlalchemy import make_url, text

    from jobqueue import migrate
    from jobqueue.drivers.engines import make_engine

    caplog.set_level(logging.WARNING, logger="jobqueue")
    migrate(postgres_url, table=table_name)
    jq = AsyncJobQueue(postgres_url, table=table_name)
    database = make_url(postgres_url).database
    admin = make_engine(jobqueue_postgres_server_url, isolation_level="AUTOCOMMIT")

    def outage(on: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {not on!s}'))
            if on:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                )

    async def echo(job: Job, ctx: WorkerContext) -> Any:
        return job.payload

    worker = Worker(jq, {"echo": echo}, lease=1.5, poll_interval=0.1)
    task = asyncio.create_task(worker.run())
    try:
        first = await jq.enqueue("echo", {"n": 1})
        assert (await jq.wait(first.id, interval=0.05, timeout=10)).status is Status.COMPLETED
        later = await jq.enqueue("echo", {"n": 2}, delay=1.0)  # comes due during the outage
        outage(True)
        await asyncio.sleep(2.0)
        assert not task.done()
        outage(False)
        done = await jq.wait(later.id, interval=0.05, timeout=15)
        assert (done.status, done.result) == (Status.COMPLETED, {"n": 2})
        text_ = messages(caplog)
        assert "claiming jobs failed" in text_
        assert "listener on channel" in text_  # the listener noticed and reconnected
    finally:
        outage(False)
        worker.stop()
        await asyncio.wait_for(task, 15)
        await jq.close()
        admin.dispose()
