"""LISTEN/NOTIFY on PostgreSQL: an idle worker wakes on inserts, and survives its listener
connection being killed.

The worker polls only every 30 s here, so a job finishing within a few seconds can only
have been picked up through a notification. Bounds are generous on purpose: these are
correctness checks, not timing benchmarks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status, migrate
from jobqueue.drivers.listen import Listener, libpq_url
from jobqueue.worker import Worker, WorkerContext
from tests.conftest import sql_runner

pytestmark = pytest.mark.postgres

POLL = 30.0  # far longer than any bound below
BOUND = 10.0


@pytest.fixture
async def pgq(postgres_url: str, table_name: str) -> AsyncIterator[AsyncJobQueue]:
    migrate(postgres_url, table=table_name)
    q = AsyncJobQueue(postgres_url, table=table_name)
    yield q
    await q.close()


@pytest.fixture
def admin_sql(postgres_url: str) -> Iterator[Callable[..., list[Any]]]:
    with sql_runner(postgres_url) as run:
        yield run


async def echo(job: Job, ctx: WorkerContext) -> Any:
    return job.payload


async def settled(worker: Worker) -> None:
    """Wait until the worker listens and its claim loop has gone back to sleep."""
    for _ in range(int(BOUND / 0.05)):
        if worker.listener is not None:
            break
        await asyncio.sleep(0.05)
    assert worker.listener is not None
    await asyncio.wait_for(worker.listener.listening.wait(), BOUND)
    # The claims that the (re)connection itself caused: the claim its wake-up asks for may
    # start only after the worker's first claim answers, which on a busy machine takes
    # longer than a short window would wait.
    before = -1
    while before != worker.claims or worker._lifecycle.wake.is_set():
        before = worker.claims
        await asyncio.sleep(1.0)


async def test_notify_wakes_an_idle_worker_long_before_its_poll(pgq: AsyncJobQueue) -> None:
    worker = Worker(pgq, {"echo": echo}, poll_interval=POLL, lease=5)
    task = asyncio.create_task(worker.run())
    try:
        await settled(worker)
        assert worker.listener is not None
        heard = worker.listener.notifications
        job = await pgq.enqueue("echo", {"hello": "world"})
        done = await pgq.wait(job.id, interval=0.05, timeout=BOUND)
        assert (done.status, done.result) == (Status.COMPLETED, {"hello": "world"})
        assert worker.listener.notifications > heard
    finally:
        worker.stop()
        await asyncio.wait_for(task, BOUND)


async def test_other_queues_notifications_do_not_wake_the_worker(pgq: AsyncJobQueue) -> None:
    worker = Worker(pgq, {"echo": echo}, queues=["images"], poll_interval=POLL, lease=5)
    task = asyncio.create_task(worker.run())
    try:
        await settled(worker)
        claims = worker.claims
        await pgq.enqueue("echo", {}, queue="emails")
        mine = await pgq.enqueue("echo", {"n": 1}, queue="images")
        done = await pgq.wait(mine.id, interval=0.05, timeout=BOUND)
        assert done.status is Status.COMPLETED
        assert worker.claims == claims + 1  # only the "images" notification woke it
    finally:
        worker.stop()
        await asyncio.wait_for(task, BOUND)


async def test_listener_reconnects_after_its_backend_is_terminated(
    pgq: AsyncJobQueue, admin_sql: Callable[..., list[Any]]
) -> None:
    worker = Worker(pgq, {"echo": echo}, poll_interval=POLL, lease=5)
    task = asyncio.create_task(worker.run())
    try:
        await settled(worker)
        listener = worker.listener
        assert listener is not None and listener.connections == 1
        killed = admin_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = :name",
            name=listener.application_name,
        )
        assert killed == [(True,)]
        for _ in range(int(BOUND / 0.05)):
            if listener.connections == 2 and listener.listening.is_set():
                break
            await asyncio.sleep(0.05)
        assert listener.connections == 2
        await settled(worker)
        job = await pgq.enqueue("echo", {"after": "reconnect"})
        done = await pgq.wait(job.id, interval=0.05, timeout=BOUND)
        assert done.status is Status.COMPLETED
    finally:
        worker.stop()
        await asyncio.wait_for(task, BOUND)


async def test_listen_off_still_polls(pgq: AsyncJobQueue) -> None:
    worker = Worker(pgq, {"echo": echo}, poll_interval=0.2, lease=5, listen=False)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.1)
        assert worker.listener is None
        job = await pgq.enqueue("echo", {"polled": True})
        done = await pgq.wait(job.id, interval=0.05, timeout=BOUND)
        assert done.status is Status.COMPLETED
    finally:
        worker.stop()
        await asyncio.wait_for(task, BOUND)


async def test_listener_on_its_own_hears_inserts_by_any_client(
    pgq: AsyncJobQueue, admin_sql: Callable[..., list[Any]]
) -> None:
    heard: list[str | None] = []
    listener = Listener(
        libpq_url(pgq.engine.url), pgq.table.name, heard.append, application_name="jq-test"
    )
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.listening.wait(), BOUND)
        # A plain INSERT with only server defaults, as a web front end or psql would do.
        admin_sql(f"INSERT INTO {pgq.table_name} (payload) VALUES ('{{}}')")
        for _ in range(int(BOUND / 0.05)):
            if "default" in heard:
                break
            await asyncio.sleep(0.05)
        assert heard[0] is None  # the wake-up after connecting
        assert "default" in heard
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_libpq_url_keeps_the_password_and_drops_driver_options() -> None:
    from sqlalchemy import make_url

    url = make_url(
        "postgresql+psycopg://worker:p%40ss@db.example:6543/app"
        "?prepare_threshold=none&sslmode=require"
    )
    assert libpq_url(url) == "postgresql://worker:p%40ss@db.example:6543/app?sslmode=require"
    asyncpg = make_url("postgresql+asyncpg://u@h/db?prepared_statement_cache_size=0")
    assert libpq_url(asyncpg) == "postgresql://u@h/db"
