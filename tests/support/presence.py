"""Helpers of the live-workers tests (tests/operations/test_presence.py, what others conclude
from the rows; tests/worker/test_presence.py, a worker's own row): polling, the rows as
stored, a real worker in a thread, a PostgreSQL login role, the command line."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import make_url, select

from jobqueue import AsyncJobQueue, JobQueue
from jobqueue.drivers.engines import READ_ONLY, make_engine
from jobqueue.sql.table import workers_table
from jobqueue.worker import Worker
from tests.cli.helpers import JOBQUEUE, Result, clean_env


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
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
        await asyncio.sleep(0.05)


def until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """`eventually` for code without an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.05)


def rows_in(url: str, table: str) -> list[str]:
    """The worker ids in the live-workers table, live or not (read as the owner).

    A read-only transaction: on SQLite it takes no write lock, so this blocking read never
    waits for a worker running in the caller's own event loop (which could not release
    the lock while this call holds the loop)."""
    engine = make_engine(url)
    try:
        with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            t = workers_table(table)
            return [r for (r,) in conn.execute(select(t.c.worker_id).order_by(t.c.worker_id))]
    finally:
        engine.dispose()


@contextlib.contextmanager
def worker_thread(url: str, table: str, **options: Any) -> Iterator[Worker]:
    """A real Worker in its own thread and event loop (so a blocking wait can run here)."""
    ready = threading.Event()
    holder: dict[str, Worker] = {}

    def main() -> None:
        async def serve() -> None:
            queue = AsyncJobQueue(url, table=table)
            worker = Worker(queue, poll_interval=0.05, grace_period=2, listen=False, **options)
            holder["worker"] = worker
            task = asyncio.create_task(worker.run())
            await asyncio.sleep(0)
            ready.set()
            try:
                await task
            finally:
                await queue.close()

        asyncio.run(serve())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(20)
    worker = holder["worker"]
    try:
        # Its row is written before it claims anything.
        with JobQueue(url, table=table) as q:
            until(lambda: worker.worker_id in {w.worker_id for w in q.live_workers()})
        yield worker
    finally:
        worker.stop()
        thread.join(20)
        assert not thread.is_alive()


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """Run the console script in ``cwd`` (the mock generator unless ``env`` says otherwise)."""
    done = subprocess.run(
        [JOBQUEUE, *args], cwd=cwd, env=env or clean_env(MOCK_AI="true"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return Result(done.returncode, done.stdout, done.stderr)


@contextlib.contextmanager
def role(postgres_url: str, *grants: str) -> Iterator[str]:
    """A login role (trust auth) with ``grants`` (SQL run as the owner, ``{role}`` filled
    in); its URL is yielded; the role is dropped afterwards."""
    name = f"jq_presence_{uuid.uuid4().hex[:8]}"
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN')
            for grant in grants:
                conn.exec_driver_sql(grant.format(role=f'"{name}"'))
        yield make_url(postgres_url).set(username=name).render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP OWNED BY "{name}"')
            conn.exec_driver_sql(f'DROP ROLE "{name}"')
        engine.dispose()
