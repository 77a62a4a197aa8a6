"""Through PgBouncer in transaction mode, as Supabase's pooler (port 6543) runs it.

The test starts Debian's ``pgbouncer`` on a free loopback port in front of the local
PostgreSQL (``.ci/run`` installs it). In transaction mode consecutive transactions of one
client may run on different server connections, so nothing may outlive a transaction:
no session state, no LISTEN (workers run with ``listen=False``) and no server-side prepared
statements — hence ``?prepare_threshold=none`` in the URL, which jobqueue hands to psycopg.
The behavioural suite (the PostgreSQL half of tests/test_queue.py) runs through it too.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from jobqueue import AsyncJobQueue, JobQueue, LeaseLost, NewJob, Status, migrate

from .conftest import Workers, check_exactly_once, status_counts, wait_for

pytestmark = pytest.mark.postgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def pgbouncer_port() -> Iterator[int]:
    """A pgbouncer (transaction pooling) in front of 127.0.0.1:5432 for this module."""
    binary = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if binary is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)"
        if os.environ.get("JOBQUEUE_REQUIRE_POSTGRES", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    port = _free_port()
    directory = Path(tempfile.mkdtemp(prefix="jq-pgbouncer-"))
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"""[databases]
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
server_reset_query =
logfile = {directory}/pgbouncer.log
pidfile = {directory}/pgbouncer.pid
"""
    )
    argv = [binary]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chmod(directory, 0o755)
        for path in (directory, *directory.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
        argv += ["-u", "postgres"]
    # pgbouncer also logs every login to stderr: into a file, not a pipe nobody reads (a
    # full pipe blocks pgbouncer, which then stops accepting connections).
    stderr_path = directory / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [*argv, str(directory / "pgbouncer.ini")], stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 15
        while not _accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = stderr_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"pgbouncer did not start: {err}", pytrace=False)
            time.sleep(0.1)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pooled(postgres_url: str, pgbouncer_port: int, table_name: str) -> tuple[str, str]:
    """(URL through pgbouncer, table): migrated through the pooler too."""
    url = (
        make_url(postgres_url)
        .set(host="127.0.0.1", port=pgbouncer_port)
        .update_query_dict({"prepare_threshold": "none"})
        .render_as_string(hide_password=False)
    )
    migrate(url, table=table_name)
    return url, table_name


def test_the_queue_api_through_a_transaction_pooler(pooled: tuple[str, str]) -> None:
    url, table = pooled
    with JobQueue(url, table=table, retry_backoff=(0.01, 0.02)) as q:
        # Enough rounds that psycopg would have prepared every statement (it does after 5).
        for round_ in range(8):
            name = f"round{round_}"
            first = q.enqueue("image", {"round": round_}, idempotency_key="k", queue=name)
            assert q.enqueue("image", {}, idempotency_key="k", queue=name).id == first.id
            batch = q.enqueue_many(
                [NewJob(payload={"n": i}, priority=i, queue=name) for i in range(3)]
            )
            assert [j.payload["n"] for j in batch] == [0, 1, 2]
            claimed = q.claim("pooled-worker", queues=[name], limit=10, lease=30)
            assert len(claimed) == 4
            top, *rest = claimed
            q.heartbeat(top)
            q.set_progress(top, 50, "half")
            q.save_remote_task_id(top, f"task-{round_}")
            assert q.complete(top, {"ok": round_}).status is Status.COMPLETED
            with pytest.raises(LeaseLost):
                q.complete(top)
            assert q.fail(rest[0], "boom", retry=False).status is Status.FAILED
            assert q.release(rest[1]).status is Status.PENDING
            assert q.cancel(rest[2].id).status is Status.CANCELLED
            assert q.retry(rest[0].id).status is Status.PENDING
            assert q.get(top.id).result == {"ok": round_}
            assert q.wait(top.id, interval=0.05, timeout=5).status is Status.COMPLETED
            assert q.list(status="completed", limit=100)
            assert {s.status for s in q.stats()} >= {Status.COMPLETED}
            q.reap()
        assert q.prune(older_than=0) >= 8


async def test_the_async_queue_through_a_transaction_pooler(pooled: tuple[str, str]) -> None:
    url, table = pooled
    async with AsyncJobQueue(url, table=table) as q:
        for round_ in range(8):
            job = await q.enqueue("image", {"round": round_}, owner_id="u")
            (held,) = await q.claim("async-pooled", lease=30)
            assert held.id == job.id
            assert await q.heartbeat_many("async-pooled", [held]) == {held.id}
            await q.set_progress(held, 10)
            done = await q.complete(held, {"ok": True})
            assert (await q.get(job.id)) == done
        assert len(await q.list(owner_id="u", limit=100)) == 8


async def test_large_batches_are_copied_through_a_transaction_pooler(
    pooled: tuple[str, str],
) -> None:
    """`enqueue_many` COPYs large batches: one statement in autocommit, or part of the
    caller's transaction, so the pooler may hand each batch to any server connection."""
    url, table = pooled
    jobs = [NewJob(payload={"n": i}, queue=f"q{i % 3}") for i in range(500)]
    with JobQueue(url, table=table) as q:
        for _ in range(3):
            done = q.enqueue_many(jobs)
            assert [q.get(j.id) for j in done[::50]] == done[::50]
        with q.engine.begin() as conn:
            q.enqueue_many(jobs, connection=conn)
    async with AsyncJobQueue(url, table=table) as aq:
        for _ in range(3):
            done = await aq.enqueue_many(jobs)
            assert [await aq.get(j.id) for j in done[::50]] == done[::50]
        assert len(await aq.list(limit=10_000)) == 7 * 500


def test_workers_drain_through_a_transaction_pooler(
    pooled: tuple[str, str], tmp_path: Path
) -> None:
    url, table = pooled
    queue = JobQueue(url, table=table)
    jobs = queue.enqueue_many([NewJob(kind="work", payload={"n": i}) for i in range(1_000)])
    workers = Workers(url, table, tmp_path)
    try:
        for _ in range(3):
            workers.start(concurrency=20, lease=30, sleep=0.01, poll_interval=0.2, no_listen=True)
        wait_for(lambda: status_counts(queue) == {"completed": 1_000}, 120, "the drain")
        assert set(workers.stop_all().values()) == {0}
    finally:
        workers.cleanup()
    check_exactly_once(queue, workers, [j.id for j in jobs])
    logs = workers.log_text()
    assert "listen=off" in logs and "WARNING" not in logs and "ERROR" not in logs, logs[-2000:]
    queue.close()


def test_limits_and_fair_share_hold_through_a_transaction_pooler(
    pooled: tuple[str, str], tmp_path: Path
) -> None:
    """Claims within limits are transactions (lock the rows, claim, record the starts):
    through the pooler each runs on one server connection, and the caps still hold."""
    url, table = pooled
    queue = JobQueue(url, table=table)
    queue.set_limit("work", max_running=4, max_running_per_owner=2)
    queue.pause("default", duration=60, reason="before the drain")
    jobs = queue.enqueue_many(
        [NewJob(kind="work", owner_id=f"u{i % 5}", payload={"n": i}) for i in range(200)]
    )
    assert queue.claim("pooled", limit=10) == []  # paused
    assert queue.resume("default").paused is False
    workers = Workers(url, table, tmp_path)
    try:
        for _ in range(2):
            workers.start(concurrency=10, lease=30, sleep=0.01, poll_interval=0.2, no_listen=True)
        wait_for(lambda: status_counts(queue) == {"completed": 200}, 120, "the drain")
        assert set(workers.stop_all().values()) == {0}
    finally:
        workers.cleanup()
    check_exactly_once(queue, workers, [j.id for j in jobs])
    (row,) = [r for r in queue.list_limits() if r.name == "work"]
    assert (row.running, row.pending) == (0, 0)
    queue.close()


# The PostgreSQL half of tests/queue/test_queue.py in two nested runs that together select
# every test of it once: the sync queue's, and the rest (the async queue's and those of
# one flavour). Two parts, so that two test processes can share the half-minute.
SUITE_PARTS = {"sync": "postgres and [sync-", "async-and-others": "postgres and not [sync-"}


@pytest.mark.parametrize("part", list(SUITE_PARTS))
def test_the_behavioural_suite_passes_through_a_transaction_pooler(
    postgres_url: str, pgbouncer_port: int, part: str
) -> None:
    """The whole PostgreSQL half of tests/queue/test_queue.py (sync and async), through
    pgbouncer: nested pytest runs whose server URL is the pooler's, with PostgreSQL required
    so a skipped test fails them."""
    server = (
        make_url(postgres_url)
        .set(host="127.0.0.1", port=pgbouncer_port, database="postgres")
        .update_query_dict({"prepare_threshold": "none"})
        .render_as_string(hide_password=False)
    )
    env = {
        **os.environ,
        "JOBQUEUE_TEST_POSTGRES_URL": server,
        "JOBQUEUE_REQUIRE_POSTGRES": "1",
    }
    root = Path(__file__).parents[2]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-n",
            "0",  # one process: the pooler's connections are the point, not the speed
            "-k",
            SUITE_PARTS[part],
            str(root / "tests" / "queue" / "test_queue.py"),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary
