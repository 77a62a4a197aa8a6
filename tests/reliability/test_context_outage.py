"""A short database outage while handlers write to their jobs spends no attempt.

Thirty-five jobs of one attempt each run in one worker: twenty image generations against
the fake DefAPI on loopback (which counts submissions per prompt) and fifteen handlers of
our own (ten async, five sync through ``run_in_loop``) that save a task id and report
progress in a loop. Every task id is learnt and written while the database is away: the
fake holds its submit answers, and the handlers of our own wait (or look), until the outage
has begun. The handlers of our own write progress all through it.

- PostgreSQL: the database refuses connections (``ALLOW_CONNECTIONS false``) and every
  connection to it is terminated, for a second; the shared server is never restarted (the
  test has a database of its own). Every job completes in its one attempt, each task was
  submitted once and its id is on the job, and no progress write was dropped.
- SQLite: an outage cannot be made the same way. A database file cannot refuse
  connections, and another connection holding the write lock (``BEGIN EXCLUSIVE``) for a
  second is no error: jobqueue's connections wait for the lock (a busy timeout of a
  minute), so every write simply lands late. The same drill runs with the lock held for a
  second and checks the same outcome; SQLite's transient errors proper are checked with a
  refusing trigger in ``tests/worker/test_context_writes.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import make_url, text

from jobqueue import AsyncJobQueue, Job, JobQueue, NewJob, Status, migrate
from jobqueue.generators import DefAPIGenerator
from jobqueue.worker import Worker, WorkerContext
from tests.support.fake_defapi import FakeDefAPI

from .conftest import all_jobs, refused_connections

IMAGES = 20
TICKERS = 10
SYNC_TICKERS = 5
OUTAGE = 1.0

Outage = Callable[[], contextlib.AbstractAsyncContextManager[None]]


@pytest.fixture
def outage_database(postgres_url: str, table_name: str) -> Iterator[tuple[str, JobQueue]]:
    """A database of the test's own (its URL), and a queue on the fixture's database to
    take it away with."""
    admin = JobQueue(postgres_url)
    url = make_url(postgres_url)
    name = f"{url.database}_ctx_outage"

    def run(sql: str) -> None:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(sql))

    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False), admin
    finally:
        run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


async def drill(
    url: str, table: str, fake: FakeDefAPI, outage: Outage, caplog: pytest.LogCaptureFixture
) -> list[Job]:
    """Run the thirty-five jobs with ``outage`` begun once every one waits for its task id,
    ended after `OUTAGE` seconds; return the jobs once all are final."""
    caplog.set_level(logging.INFO, logger="jobqueue")
    migrate(url, table=table)
    queue = AsyncJobQueue(url, table=table)
    begun, over = asyncio.Event(), asyncio.Event()
    begun_sync, over_sync = threading.Event(), threading.Event()
    waiting: set[Any] = set()
    submitted: collections.Counter[Any] = collections.Counter()

    async def tick(job: Job, ctx: WorkerContext) -> str | None:
        """Progress in a loop from the start to just after the outage and, side by side,
        the task id once the outage has begun."""

        async def progress() -> None:
            after = n = 0
            while after < 3:
                await ctx.report_progress(n % 100, f"tick {n}")
                after += over.is_set()
                n += 1
                await asyncio.sleep(0.02)

        async def submit() -> None:
            if ctx.remote_task_id is None:
                submitted[job.id] += 1
                await begun.wait()
                await ctx.save_remote_task_id(f"tick-{job.id}")

        waiting.add(job.id)
        await asyncio.gather(progress(), submit())
        return ctx.remote_task_id

    def tick_sync(job: Job, ctx: WorkerContext) -> str | None:
        """Progress in a loop from the start to just after the outage, and the task id in
        between, at the first turn of the loop after the outage has begun."""
        waiting.add(job.id)
        after = n = 0
        while after < 3:
            if begun_sync.is_set() and ctx.remote_task_id is None:
                submitted[job.id] += 1
                ctx.run_in_loop(ctx.save_remote_task_id(f"tick-{job.id}"))
            ctx.run_in_loop(ctx.report_progress(n % 100, f"tick {n}"))
            after += over_sync.is_set()
            n += 1
            time.sleep(0.02)
        return ctx.remote_task_id

    fake.scenario(polls_before_success=3)
    fake.submit_gate = gate = threading.Event()
    # A long request timeout: the submits are held until every handler is ready, which on
    # a loaded machine may take a while.
    generator = DefAPIGenerator(
        fake.api_key, base_url=fake.url, poll_interval=0.1, request_timeout=120
    )
    worker = Worker(
        queue,
        {"image": generator, "tick": tick, "tick_sync": tick_sync},
        concurrency=IMAGES + TICKERS + SYNC_TICKERS,
        lease=5,
        poll_interval=0.05,
    )
    try:
        await queue.enqueue_many(
            [
                NewJob(kind="image", payload={"prompt": f"outage {i}"}, max_attempts=1)
                for i in range(IMAGES)
            ]
            + [NewJob(kind="tick", payload={"n": i}, max_attempts=1) for i in range(TICKERS)]
            + [
                NewJob(kind="tick_sync", payload={"n": i}, max_attempts=1)
                for i in range(SYNC_TICKERS)
            ]
        )
        running = asyncio.create_task(worker.run())
        try:
            deadline = time.monotonic() + 60
            while (
                sum(fake.submit_requests.values()) < IMAGES or len(waiting) < TICKERS + SYNC_TICKERS
            ):
                assert time.monotonic() < deadline, (
                    f"the handlers never all waited: {sum(fake.submit_requests.values())} "
                    f"submits, {len(waiting)} tickers"
                )
                await asyncio.sleep(0.05)
            async with outage():
                begun.set()
                begun_sync.set()
                gate.set()
                await asyncio.sleep(OUTAGE)
            over.set()
            over_sync.set()
            deadline = time.monotonic() + 90
            while not all(j.is_final for j in await asyncio.to_thread(_jobs, url, table)):
                assert time.monotonic() < deadline, "jobs still running after the outage"
                await asyncio.sleep(0.2)
        finally:
            begun_sync.set()
            over_sync.set()
            gate.set()
            worker.stop()
            await asyncio.wait_for(running, 60)
        jobs = await asyncio.to_thread(_jobs, url, table)
    finally:
        await generator.aclose()
        await queue.close()
    assert len(submitted) == TICKERS + SYNC_TICKERS
    assert all(n == 1 for n in submitted.values()), submitted
    return jobs


def _jobs(url: str, table: str) -> list[Job]:
    queue = JobQueue(url, table=table)
    try:
        return all_jobs(queue)
    finally:
        queue.close()


def check_no_attempt_spent(jobs: list[Job], fake: FakeDefAPI) -> None:
    """Every job completed in its one attempt; every task was submitted once and its id
    is on its job."""
    assert len(jobs) == IMAGES + TICKERS + SYNC_TICKERS
    spent = [(j.kind, j.status, j.attempts, j.errors) for j in jobs if j.status != Status.COMPLETED]
    assert not spent, f"{len(spent)} jobs lost their attempt: {spent[:5]}"
    assert all(j.attempts == 1 and j.errors == [] for j in jobs)
    for job in jobs:
        if job.kind == "image":
            prompt = job.payload["prompt"]
            assert fake.submit_requests[prompt] == 1, prompt
            assert fake.submissions[prompt] == 1, prompt
            (task,) = fake.tasks_for(prompt)
            assert job.remote_task_id == task.task_id
            assert job.result_url is not None and task.task_id in job.result_url
        else:
            assert job.remote_task_id == f"tick-{job.id}"
            assert job.result == f"tick-{job.id}"


def _log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


@pytest.mark.postgres
async def test_a_postgres_outage_while_handlers_write_spends_no_attempt(
    outage_database: tuple[str, JobQueue],
    table_name: str,
    fake_defapi: FakeDefAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, admin = outage_database
    database = make_url(url).database
    assert database is not None
    terminated: list[int] = []

    @contextlib.asynccontextmanager
    async def outage() -> AsyncIterator[None]:
        cm = refused_connections(admin, database)
        terminated.append(await asyncio.to_thread(cm.__enter__))
        try:
            yield
        finally:
            await asyncio.to_thread(cm.__exit__, None, None, None)

    jobs = await drill(url, table_name, fake_defapi, outage, caplog)
    check_no_attempt_spent(jobs, fake_defapi)
    assert terminated and terminated[0] >= 1
    log = _log(caplog)
    # The outage met the handlers' writes, and they were retried, none dropped.
    assert "saving the provider's task id failed" in log
    assert re.search(r"recording progress \d+% failed", log)
    assert "progress not recorded" not in log


async def test_a_locked_sqlite_database_while_handlers_write_spends_no_attempt(
    jobqueue_sqlite_url: str,
    table_name: str,
    fake_defapi: FakeDefAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = make_url(jobqueue_sqlite_url).database
    assert path

    @contextlib.asynccontextmanager
    async def outage() -> AsyncIterator[None]:
        lock = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        await asyncio.to_thread(lock.execute, "BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            await asyncio.to_thread(lock.execute, "COMMIT")
            lock.close()

    jobs = await drill(jobqueue_sqlite_url, table_name, fake_defapi, outage, caplog)
    check_no_attempt_spent(jobs, fake_defapi)
    assert "progress not recorded" not in _log(caplog)
