"""The database refusing writes: read-only, as a provider makes it when the disk fills up.

PostgreSQL is made read-only for one database of the test's own (``ALTER DATABASE ... SET
default_transaction_read_only = on``, its open sessions terminated so that the new ones
begin read-only), never the server. While it lasts, enqueue fails with
`DatabaseReadOnly` having written nothing, `jobqueue check` says the database refuses
writes, and workers back off holding the outcomes of the jobs they ran; once writes are
back every job completes, each exactly once. On SQLite, a connection that opened its file
read-only refuses writes with the same error.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import make_url, text

from jobqueue import AsyncJobQueue, DatabaseReadOnly, JobQueue, NewJob, Status, migrate
from jobqueue.cli.checks import run_checks
from jobqueue.worker import Worker

from .conftest import status_counts, wait_for

ReadOnly = Callable[[bool], None]


@pytest.fixture
def own_database(postgres_url: str) -> Iterator[tuple[str, ReadOnly]]:
    """A database of the test's own (its URL), and a switch that makes it refuse writes
    (True) or take them again (False), run from the fixture's database."""
    admin = JobQueue(postgres_url)
    name = f"{make_url(postgres_url).database}_read_only"

    def run(sql: str) -> None:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(sql))

    def read_only(on: bool) -> None:
        if on:
            run(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            # Sessions read the default when they begin: end the open ones.
            run(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
        else:
            run(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')

    run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    run(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
        yield url, read_only
    finally:
        run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _writes_line(url: str, table: str) -> tuple[str, str]:
    (line,) = [c for c in run_checks(url, table=table) if c.name == "writes"]
    return line.state, line.detail


def test_enqueue_fails_clearly_and_check_says_why(
    own_database: tuple[str, ReadOnly], table_name: str
) -> None:
    url, read_only = own_database
    migrate(url, table=table_name)
    with JobQueue(url, table=table_name) as q:
        q.enqueue("image", {})
        assert _writes_line(url, table_name)[0] == "ok"
        read_only(True)
        # Its pooled connection was terminated: its next use would fail as after any
        # restart (DatabaseUnavailable). Start from new sessions, which begin read-only.
        q.engine.dispose()
        try:
            for attempt in (
                lambda: q.enqueue("image", {"n": 1}),
                lambda: q.enqueue_many([NewJob(payload={"n": i}) for i in range(300)]),
            ):
                with pytest.raises(DatabaseReadOnly) as caught:
                    attempt()
                assert "refuses writes" in caught.value.message
                assert "writable" in caught.value.hint
            state, detail = _writes_line(url, table_name)
            assert state == "fail" and "refuses writes" in detail
            assert status_counts(q) == {"pending": 1}  # reads still work
        finally:
            read_only(False)
        # The same queue writes again: a session begun read-only is dropped when it refuses
        # a write. Those that refused one during the spell are gone already; the one the
        # reads above opened during it may refuse one more, then it is replaced too.
        refused = 0
        while True:
            try:
                q.enqueue("image", {"after": True})
                break
            except DatabaseReadOnly:
                refused += 1
                assert refused <= 1, "a session begun read-only was handed out again"
        assert status_counts(q) == {"pending": 2}
        assert _writes_line(url, table_name)[0] == "ok"


def test_a_read_only_sqlite_connection(jobqueue_sqlite_url: str, table_name: str) -> None:
    migrate(jobqueue_sqlite_url, table=table_name)
    path = make_url(jobqueue_sqlite_url).database
    with JobQueue(f"sqlite:///file:{path}?mode=ro&uri=true", table=table_name) as q:
        with pytest.raises(DatabaseReadOnly) as caught:
            q.enqueue("image", {})
        assert q.list() == []
    # The hint is about a file, not a server's settings or its standby.
    assert "database file" in caught.value.hint
    assert "default_transaction_read_only" not in caught.value.hint


async def test_workers_back_off_and_lose_nothing(
    own_database: tuple[str, ReadOnly], table_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Jobs running when the database turns read-only finish; their outcomes wait in the
    worker and are written once writes are back. Each job runs and completes once."""
    url, read_only = own_database
    migrate(url, table=table_name)
    jobs = 40
    with JobQueue(url, table=table_name) as setup:
        ids = {j.id for j in setup.enqueue_many([NewJob(kind="gated") for _ in range(jobs)])}
    gate = asyncio.Event()
    runs: collections.Counter[Any] = collections.Counter()

    async def gated(job: Any, ctx: Any) -> dict[str, bool]:
        runs[job.id] += 1
        await gate.wait()
        return {"ok": True}

    q = AsyncJobQueue(url, table=table_name)
    worker = Worker(q, {"gated": gated}, concurrency=8, lease=60, poll_interval=0.1)
    caplog.set_level(logging.WARNING, logger="jobqueue")
    serving = asyncio.create_task(worker.run())
    try:
        await asyncio.to_thread(wait_for, lambda: len(runs) == 8, 30, "eight jobs running")
        await asyncio.to_thread(read_only, True)
        try:
            gate.set()  # the running jobs finish now, while nothing can be written
            await asyncio.sleep(2.0)
            assert len(runs) == 8, "a job started while the database refused writes"
            assert not serving.done(), "the worker ended while the database refused writes"
            assert "DatabaseReadOnly" in caplog.text
            state, _ = await asyncio.to_thread(_writes_line, url, table_name)
            assert state == "fail"
        finally:
            await asyncio.to_thread(read_only, False)
        await asyncio.to_thread(wait_for, lambda: set(runs) == ids, 60, "every job to run")
        with JobQueue(url, table=table_name) as check:
            await asyncio.to_thread(
                wait_for, lambda: status_counts(check) == {"completed": jobs}, 60, "completions"
            )
        assert set(runs.values()) == {1}, "a job ran twice"
        assert {(await q.get(i)).status for i in ids} == {Status.COMPLETED}
    finally:
        worker.stop()
        await asyncio.wait_for(serving, 30)
        await q.close()
