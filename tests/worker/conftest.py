"""Fixtures and helpers of the worker's tests (real databases: SQLite and PostgreSQL via the
`migrated` fixture; handlers are small real functions, nothing of jobqueue is mocked)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from jobqueue import AsyncJobQueue
from jobqueue.drivers.engines import make_engine
from jobqueue.worker import Worker


@pytest.fixture
async def jq(migrated: tuple[str, str]) -> AsyncIterator[AsyncJobQueue]:
    """A queue whose retries come back almost at once, so retry tests stay short."""
    url, table = migrated
    q = AsyncJobQueue(url, table=table, retry_backoff=(0.01, 0.02))
    yield q
    await q.close()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def drain(worker: Worker, queue: AsyncJobQueue, ids: list[Any], timeout: float = 15) -> None:
    """run_until_idle until every job is final (retries come back after a short backoff)."""
    deadline = time.monotonic() + timeout
    while True:
        await worker.run_until_idle()
        jobs = [await queue.get(i) for i in ids]
        if all(j.is_final for j in jobs):
            return
        assert time.monotonic() < deadline, [j.status for j in jobs]
        await asyncio.sleep(0.02)


def messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


async def run_in_background(worker: Worker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run())


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 15)


@contextlib.asynccontextmanager
async def table_locked(url: str, table: str) -> AsyncIterator[None]:
    """Hold a lock on the jobs table that makes every write to it wait, reads not
    (PostgreSQL: ``EXCLUSIVE`` mode; SQLite: the write lock), until the block ends.

    The lock is taken, held and given back by a thread of its own: taking it may wait for
    a statement of the worker, which needs this event loop to finish."""
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        engine = make_engine(url)
        try:
            with engine.connect() as conn, conn.begin():  # SQLite: BEGIN IMMEDIATE
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f'LOCK TABLE "{table}" IN EXCLUSIVE MODE')
                taken.set()
                done.wait(60)
                conn.rollback()
        finally:
            engine.dispose()

    holder = asyncio.create_task(asyncio.to_thread(hold))
    await asyncio.to_thread(taken.wait, 60)
    try:
        yield
    finally:
        done.set()
        await holder
