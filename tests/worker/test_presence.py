"""A worker's row in the live-workers table: written at start, refreshed by the database
clock, removed on a clean stop; the row of a killed worker goes stale and a live worker
deletes it. A worker whose role may not do a worker's work stops at start (exit 2 with the
grant or policy to add from ``jobqueue worker``); a database that refuses connections for a
while only delays it. What others conclude from the rows (waits, ``jobqueue workers``) is
tested in tests/operations/test_presence.py; the helpers both share are in
tests/support/presence.py.

Real databases, real worker processes, real PostgreSQL roles; nothing of jobqueue is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url, text

from jobqueue import AsyncJobQueue, Job, JobQueue, PermissionDenied, Status, migrate
from jobqueue.drivers.engines import make_engine
from jobqueue.models import WorkerPresence
from jobqueue.operations.presence import LIVE_LEASES
from jobqueue.sql.table import limits_table_name, workers_table_name
from jobqueue.worker import Worker, WorkerContext
from tests.cli.helpers import JOBQUEUE, clean_env
from tests.support.presence import cli, eventually, role, rows_in, until, worker_thread


@pytest.fixture
async def jq(migrated: tuple[str, str]) -> AsyncIterator[AsyncJobQueue]:
    url, table = migrated
    q = AsyncJobQueue(url, table=table)
    yield q
    await q.close()


# -- a worker's row -------------------------------------------------------------------------


async def test_a_worker_keeps_its_row_fresh_by_the_database_clock_and_removes_it_on_stop(
    jq: AsyncJobQueue, migrated: tuple[str, str]
) -> None:
    url, table = migrated

    async def work(job: Job, ctx: WorkerContext) -> None:
        return None

    lease = 0.6
    worker = Worker(
        jq,
        {"work": work, "email": work},
        queues=("default", "mail"),
        concurrency=3,
        lease=lease,
        worker_id="w-presence",
        listen=False,
    )
    task = asyncio.create_task(worker.run())
    try:
        (first,) = await eventually(jq.live_workers)
        assert first.worker_id == "w-presence"
        assert (first.queues, first.kinds, first.concurrency) == (
            ("default", "mail"),
            ("work", "email"),
            3,
        )
        assert (first.host, first.pid) == (socket.gethostname(), os.getpid())
        # Times come from the database clock: the beat is what the database called "now"
        # a moment ago, and the row lives LIVE_LEASES leases past it. (A statement's time
        # is taken when it arrives, before it takes its snapshot: a beat committed in
        # between is seen, with a time a fraction of a millisecond later.)
        assert -0.05 <= (first.seen_at - first.last_beat_at).total_seconds() < 5
        lives = (first.expires_at - first.last_beat_at).total_seconds()
        assert lives == pytest.approx(LIVE_LEASES * lease, abs=0.05)

        async def refreshed() -> Any:
            (now,) = await jq.live_workers()
            return now if now.last_beat_at > first.last_beat_at else None

        later = await eventually(refreshed)
        assert later.started_at == first.started_at  # the same row, beaten again
        assert later.expires_at > first.expires_at
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
    assert await jq.live_workers() == []
    assert rows_in(url, table) == []  # removed, not merely expired


async def test_a_worker_sweeps_the_rows_of_workers_that_stopped_beating(
    jq: AsyncJobQueue, migrated: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, table = migrated
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    await jq.worker_beat(WorkerPresence("crashed-1", ("default",), None, 1), ttl=0.05)
    await asyncio.sleep(0.2)
    assert await jq.live_workers() == []  # stale at once, by the database clock...
    assert rows_in(url, table) == ["crashed-1"]  # ...but still there until swept
    worker = Worker(jq, {"work": print}, worker_id="sweeper", lease=0.6, listen=False)
    task = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: rows_in(url, table) == ["sweeper"])
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
    assert "Worker crashed-1 sent no heartbeat lately" in caplog.text


def test_a_killed_workers_row_goes_stale_and_a_live_worker_removes_it(
    migrated: tuple[str, str], tmp_path: Path
) -> None:
    url, table = migrated
    command = [
        JOBQUEUE, "--database-url", url, "--table", table, "worker",
        "--lease", "1s", "--worker-id", "doomed", "--no-listen",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=tmp_path, env=clean_env(MOCK_AI="true"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with JobQueue(url, table=table) as q:
            # The console script's start (its imports, the first beat) took over 15 s in a
            # CI run with four test processes on two slow cores: a bound for a start.
            until(lambda: [w.worker_id for w in q.live_workers()] == ["doomed"], timeout=60)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            assert rows_in(url, table) == ["doomed"]  # no clean stop: the row stays...
            until(lambda: q.live_workers() == [], timeout=10)  # ...goes stale
            assert rows_in(url, table) == ["doomed"]
            with worker_thread(url, table, handlers={"work": print}, lease=0.6) as survivor:
                until(lambda: rows_in(url, table) == [survivor.worker_id])
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


# -- permissions and outages at start -------------------------------------------------------


async def start_as(url: str, table: str) -> None:
    """Run a worker as the URL's role until it stops (it must stop at once)."""
    queue = AsyncJobQueue(url, table=table)
    try:
        worker = Worker(queue, {"work": print}, listen=False)
        await asyncio.wait_for(worker.run(), 15)
    finally:
        await queue.close()


@pytest.mark.postgres
async def test_a_role_without_update_on_the_jobs_table_stops_the_worker_at_start(
    postgres_url: str, table_name: str, tmp_path: Path
) -> None:
    migrate(postgres_url, table=table_name)
    workers = workers_table_name(table_name)
    with role(
        postgres_url,
        f'GRANT SELECT ON "{table_name}" TO {{role}}',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{workers}" TO {{role}}',
    ) as url:
        with pytest.raises(PermissionDenied) as refused:
            await start_as(url, table_name)
        assert f"may not UPDATE on {table_name}" in refused.value.message
        assert f"GRANT SELECT, UPDATE ON {table_name} TO jq_presence_" in refused.value.hint
        assert rows_in(postgres_url, table_name) == []  # stopped before writing its row
        started = cli("--database-url", url, "--table", table_name, "worker", cwd=tmp_path)
    assert started.code == 2, (started.out, started.err)
    last = started.err.strip().splitlines()[-1]
    assert last.startswith("Error: ") and "may not UPDATE" in last
    assert "jobqueue sql --supabase --worker-role jq_presence_" in last
    assert "Traceback" not in started.err


@pytest.mark.postgres
async def test_a_role_without_rights_on_the_workers_table_stops_the_worker_at_start(
    postgres_url: str, table_name: str
) -> None:
    """A role granted the jobs table alone (what the docs once advised) must be granted the
    live-workers table too: it says so instead of running unseen by waits and checks."""
    migrate(postgres_url, table=table_name)
    with (
        role(
            postgres_url, f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table_name}" TO {{role}}'
        ) as url,
        pytest.raises(PermissionDenied) as refused,
    ):
        await start_as(url, table_name)
    assert f"on {table_name}_workers" in refused.value.message
    assert "SELECT, INSERT, UPDATE, DELETE" in refused.value.message


@pytest.mark.postgres
async def test_a_role_without_rights_on_the_limits_table_stops_the_worker_at_start(
    postgres_url: str, table_name: str
) -> None:
    """Claims read the limits in force: a role granted the jobs and live-workers tables but
    not the limits table is told what to grant at start, instead of retrying every claim
    for ever."""
    migrate(postgres_url, table=table_name)
    workers = workers_table_name(table_name)
    with (
        role(
            postgres_url,
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table_name}" TO {{role}}',
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{workers}" TO {{role}}',
        ) as url,
        pytest.raises(PermissionDenied) as refused,
    ):
        await start_as(url, table_name)
    assert f"on {limits_table_name(table_name)}" in refused.value.message
    assert "SELECT, INSERT, UPDATE" in refused.value.message


@pytest.mark.postgres
async def test_row_level_security_without_a_policy_for_the_worker_stops_it_at_start(
    postgres_url: str, table_name: str
) -> None:
    migrate(postgres_url, table=table_name)
    workers = workers_table_name(table_name)
    limits = limits_table_name(table_name)
    owner = make_engine(postgres_url)
    try:
        with owner.begin() as conn:
            conn.exec_driver_sql(f'ALTER TABLE "{table_name}" ENABLE ROW LEVEL SECURITY')
        with role(
            postgres_url,
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table_name}" TO {{role}}',
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{workers}" TO {{role}}',
            # Every claim reads the limits in force (and a claim within them writes them).
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{limits}" TO {{role}}',
        ) as url:
            with pytest.raises(PermissionDenied) as refused:
                await start_as(url, table_name)
            assert "row-level security on " + table_name in refused.value.message
            assert "SELECT, UPDATE" in refused.value.message
            # With a policy for the role the same worker starts and runs jobs.
            worker_role = make_url(url).username
            with owner.begin() as conn:
                conn.exec_driver_sql(
                    f'CREATE POLICY jq_worker ON "{table_name}" FOR ALL TO "{worker_role}" '
                    "USING (true) WITH CHECK (true)"
                )
            queue = AsyncJobQueue(url, table=table_name)
            try:
                job = await queue.enqueue("work", {"n": 1})
                worker = Worker(queue, {"work": lambda job, ctx: job.payload}, listen=False)
                assert await asyncio.wait_for(worker.run_until_idle(), 15) == 1
                assert (await queue.get(job.id)).status is Status.COMPLETED
            finally:
                await queue.close()
    finally:
        owner.dispose()


@pytest.mark.postgres
async def test_a_worker_started_while_the_database_refuses_connections_waits_then_serves(
    postgres_url: str,
    jobqueue_postgres_server_url: str,
    table_name: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Transient errors at start (the database restarting, refusing connections) are not
    fatal: the worker retries with backoff, then registers and serves."""
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    migrate(postgres_url, table=table_name)
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

    base = ("--database-url", postgres_url, "--table", table_name)
    queue = AsyncJobQueue(postgres_url, table=table_name)
    worker = Worker(queue, {"work": lambda job, ctx: "done"}, lease=1.5, listen=False)
    outage(True)
    task = asyncio.create_task(worker.run())
    # The command's output goes to a file, read while it runs: a busy machine may take
    # seconds to start it, and the outage lasts until it, too, has been refused.
    err_path = tmp_path / "cli-worker.err"
    with err_path.open("w") as err_file:
        # Popen returns at once; the test's waits are the asyncio polls around it.
        cli_worker = subprocess.Popen(  # noqa: ASYNC220
            [JOBQUEUE, *base, "worker", "--worker-id", "cli-patient"],
            cwd=tmp_path, env=clean_env(MOCK_AI="true"),
            stdout=subprocess.DEVNULL, stderr=err_file, text=True,
        )  # fmt: skip
    try:
        await eventually(lambda: "cannot start yet" in caplog.text)
        await eventually(lambda: "cannot start yet" in err_path.read_text(), timeout=60)
        assert not task.done()
        assert cli_worker.poll() is None, err_path.read_text()
        outage(False)

        async def both_live() -> bool:
            ids = {w.worker_id for w in await queue.live_workers()}
            return {worker.worker_id, "cli-patient"} <= ids

        await eventually(both_live)
        job = await queue.enqueue("work", {})
        done = await queue.wait(job.id, interval=0.05, timeout=15)
        assert (done.status, done.result) == (Status.COMPLETED, "done")
        cli_worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(cli_worker.wait, timeout=30)
        assert cli_worker.returncode == 0, err_path.read_text()
    finally:
        if cli_worker.poll() is None:
            cli_worker.kill()
            await asyncio.to_thread(cli_worker.wait, timeout=30)
        outage(False)
        admin.dispose()
        worker.stop()
        await asyncio.wait_for(task, 15)
        await queue.close()
