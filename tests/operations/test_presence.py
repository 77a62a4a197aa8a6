"""Workers' heartbeat rows (the live-workers table) and what is concluded from them.

- The table itself (the worker's side of it, writing and keeping its row, and stopping
  at start without the rights to, is in tests/worker/test_presence.py; the helpers both
  share are in tests/support/presence.py).
- A wait (`JobQueue.wait`, ``generate_image_async``, ``jobqueue status/generate --watch``)
  says when no live worker serves the job's queue, and says nothing when one does.
- ``jobqueue workers`` and ``jobqueue check`` list the live workers.

Real databases, real worker processes, real PostgreSQL roles; nothing of jobqueue is mocked.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select

from jobqueue import (
    AsyncJobQueue,
    JobQueue,
    MockGenerator,
    PermissionDenied,
    SchemaNotInstalled,
    Status,
    WaitTimeout,
    generate_image_async,
    generate_image_queued,
    migrate,
)
from jobqueue.drivers.engines import make_engine
from jobqueue.migrations import _config
from jobqueue.models import WorkerPresence
from jobqueue.sql.table import TABLE_NAME_MAX_LENGTH, workers_table, workers_table_name
from jobqueue.worker import Worker
from tests.cli.helpers import JOBQUEUE, Result, clean_env, run_in_process, worker_running
from tests.conftest import Either
from tests.support.presence import role, until, worker_thread

NO_WORKER = "no live worker serves its queue"


def command(*args: str, cwd: Path, env: dict[str, str] | None = None) -> Result:
    """`jobqueue ARGS` in this process (with the mock generator unless ``env`` says
    otherwise): what these commands print is the point, not their process. The watch that
    must run beside a worker, and the workers, run as real processes."""
    return run_in_process(*args, cwd=cwd, env=env or clean_env(MOCK_AI="true"))


def warnings_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and r.levelno >= logging.WARNING and NO_WORKER in r.getMessage()
    ]


@pytest.fixture
async def jq(migrated: tuple[str, str]) -> AsyncIterator[AsyncJobQueue]:
    url, table = migrated
    q = AsyncJobQueue(url, table=table)
    yield q
    await q.close()


# -- the table ------------------------------------------------------------------------------


def test_the_migration_creates_the_workers_table_and_goes_back(
    db_url: str, table_name: str
) -> None:
    script = ScriptDirectory.from_config(_config(table_name, None))
    (revision,) = [r for r in script.walk_revisions() if "live_workers" in (r.path or "")]
    assert isinstance(revision.down_revision, str)
    migrate(db_url, table=table_name, revision=revision.down_revision)
    engine = make_engine(db_url)
    try:
        assert workers_table_name(table_name) not in inspect(engine).get_table_names()
        migrate(db_url, table=table_name)
        assert workers_table_name(table_name) in inspect(engine).get_table_names()
        cfg = _config(table_name, None)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            from alembic import command

            command.downgrade(cfg, revision.down_revision)
        assert workers_table_name(table_name) not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_names_derived_from_the_longest_table_name_fit_postgres() -> None:
    longest = "t" * TABLE_NAME_MAX_LENGTH
    t = workers_table(longest)
    names = [t.name, *(c.name for c in t.constraints if isinstance(c.name, str))]
    assert f"{longest}_workers_pkey" in names
    assert all(len(n) <= 63 for n in names), names


def _just_before(db_url: str, table_name: str, revision_file: str) -> AsyncJobQueue:
    """A queue on a table migrated up to the revision before the one whose file name
    holds ``revision_file``."""
    script = ScriptDirectory.from_config(_config(table_name, None))
    (revision,) = [r for r in script.walk_revisions() if revision_file in (r.path or "")]
    assert isinstance(revision.down_revision, str)
    migrate(db_url, table=table_name, revision=revision.down_revision)
    return AsyncJobQueue(db_url, table=table_name)


async def test_a_database_at_an_older_revision_names_the_missing_workers_table(
    db_url: str, table_name: str
) -> None:
    queue = _just_before(db_url, table_name, "live_workers")
    try:
        with pytest.raises(SchemaNotInstalled, match="live-workers table") as missing:
            await queue.check_worker_access()
        assert "jobqueue migrate" in missing.value.hint
        with pytest.raises(SchemaNotInstalled, match=f"{table_name}_workers"):
            await queue.live_workers()
        worker = Worker(queue, {"work": print}, listen=False)
        with pytest.raises(SchemaNotInstalled):
            await asyncio.wait_for(worker.run(), 15)
    finally:
        await queue.close()


async def test_a_database_at_an_older_revision_names_the_missing_limits_table(
    db_url: str, table_name: str
) -> None:
    queue = _just_before(db_url, table_name, "limits")
    try:
        with pytest.raises(SchemaNotInstalled, match=f"limits table '{table_name}_limits'"):
            await queue.check_worker_access()
    finally:
        await queue.close()


# -- waits that nobody serves ---------------------------------------------------------------


async def test_a_wait_says_once_that_no_live_worker_serves_the_queue(
    q: Either, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.queue")
    job = await q.enqueue("image", {"prompt": "nobody home"})
    with pytest.raises(WaitTimeout):
        await q.wait(job.id, interval=0.05, timeout=0.8, no_worker_after=0.1)
    (said,) = warnings_of(caplog, "jobqueue.queue")  # looked several times, said once
    assert f"job {job.id} is pending" in said
    assert "queue 'default'" in said and "jobqueue worker --queue default" in said
    heard: list[str] = []
    with pytest.raises(WaitTimeout):
        await q.wait(
            job.id, interval=0.05, timeout=0.4, no_worker_after=0.1, on_no_worker=heard.append
        )
    assert len(heard) == 1 and NO_WORKER in heard[0]
    caplog.clear()
    with pytest.raises(WaitTimeout):
        await q.wait(job.id, interval=0.05, timeout=0.4, no_worker_after=None)
    assert warnings_of(caplog, "jobqueue.queue") == []


async def test_a_wait_served_by_a_live_worker_says_nothing(
    q: Either, migrated: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, table = migrated
    caplog.set_level(logging.WARNING, logger="jobqueue.queue")
    with worker_thread(url, table, generator=MockGenerator(delay=1.0, steps=4)):
        job = await q.enqueue("image", {"prompt": "served"})
        done = await q.wait(job.id, interval=0.05, timeout=30, no_worker_after=0.1)
    assert done.status is Status.COMPLETED
    assert warnings_of(caplog, "jobqueue.queue") == []


def test_a_wait_names_what_the_live_workers_do_serve(migrated: tuple[str, str]) -> None:
    url, table = migrated
    heard: list[str] = []
    with (
        JobQueue(url, table=table) as q,
        worker_thread(url, table, handlers={"email": print}, queues=("default",)),
        worker_thread(url, table, handlers={"email": print}, queues=("other",)),
    ):
        wrong_kind = q.enqueue("image", {"prompt": "x"})
        with pytest.raises(WaitTimeout):
            q.wait(
                wrong_kind.id,
                interval=0.05,
                timeout=0.5,
                no_worker_after=0.1,
                on_no_worker=heard.append,
            )
        wrong_queue = q.enqueue("email", {}, queue="third")
        with pytest.raises(WaitTimeout):
            q.wait(
                wrong_queue.id,
                interval=0.05,
                timeout=0.5,
                no_worker_after=0.1,
                on_no_worker=heard.append,
            )
    kind_message, queue_message = heard
    assert "run kinds email, not 'image'" in kind_message
    assert "start a worker that runs kind 'image' in queue 'default'" in kind_message
    assert "2 live worker(s) serve other queues: default, other" in queue_message
    assert "jobqueue worker --queue third" in queue_message


async def test_generate_image_async_logs_when_no_live_worker_serves_it(
    aqueue: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.wrappers")
    with pytest.raises(WaitTimeout):
        await generate_image_async(
            aqueue, "alone", poll_interval=0.05, timeout=0.6, no_worker_after=0.1
        )
    (said,) = warnings_of(caplog, "jobqueue.wrappers")
    assert "queue 'default'" in said
    # With a worker serving the queue it says nothing.
    caplog.clear()
    worker = Worker(aqueue, generator=MockGenerator(delay=0.8), poll_interval=0.05, listen=False)
    task = asyncio.create_task(worker.run())
    try:
        result = await generate_image_async(
            aqueue, "in company", poll_interval=0.05, timeout=30, no_worker_after=0.1
        )
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
    assert result.url
    assert warnings_of(caplog, "jobqueue.wrappers") == []


def test_generate_image_queued_logs_when_no_live_worker_serves_it(
    queue: JobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.wrappers")
    with pytest.raises(WaitTimeout):
        generate_image_queued(
            queue, "alone", queue_name="nobody", poll_interval=0.05, timeout=0.6,
            no_worker_after=0.1,
        )  # fmt: skip
    (said,) = warnings_of(caplog, "jobqueue.wrappers")
    assert "queue 'nobody'" in said


# -- the command line -----------------------------------------------------------------------


def test_a_watch_warns_while_no_worker_serves_the_job_and_ends_when_one_does(
    migrated: tuple[str, str], tmp_path: Path
) -> None:
    url, table = migrated
    base = ("--database-url", url, "--table", table)
    job_id = command(*base, "generate", "a lonely fox", cwd=tmp_path).out.strip()
    watch = subprocess.Popen(
        [JOBQUEUE, *base, "status", job_id, "--watch", "--interval", "0.1"],
        cwd=tmp_path, env=clean_env(JOBQUEUE_NO_WORKER_AFTER="0.3"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(watch.stderr.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        until(lambda: any(NO_WORKER in line for line in lines))
        assert watch.poll() is None  # still watching
        with worker_running(tmp_path, base) as worker:
            out, _ = watch.communicate(timeout=60)
    finally:
        if watch.poll() is None:
            watch.kill()
    reader.join(10)
    assert watch.returncode == 0, (out, lines, worker.output)
    assert f"completed: job {job_id}" in out
    (warning,) = [line for line in lines if NO_WORKER in line]
    assert warning.startswith("warning: ") and "jobqueue worker --queue default" in warning


def test_a_watch_with_a_live_worker_does_not_warn(
    migrated: tuple[str, str], tmp_path: Path
) -> None:
    url, table = migrated
    base = ("--database-url", url, "--table", table)
    with worker_running(tmp_path, base):
        # The worker is live once its row is written: on a loaded machine its process takes
        # longer to start than the watch takes to look (0.2 s).
        with JobQueue(url, table=table) as q:
            until(q.live_workers, timeout=60)
        watched = command(
            *base, "generate", "a fox in company", "--watch", cwd=tmp_path,
            env=clean_env(JOBQUEUE_NO_WORKER_AFTER="0.2"),
        )  # fmt: skip
    assert watched.code == 0, watched.err
    assert "completed: job" in watched.out
    assert NO_WORKER not in watched.err


def test_a_bad_no_worker_after_setting_is_a_usage_error(
    migrated: tuple[str, str], tmp_path: Path
) -> None:
    url, table = migrated
    base = ("--database-url", url, "--table", table)
    created = command(
        *base, "generate", "x", "--watch", cwd=tmp_path,
        env=clean_env(JOBQUEUE_NO_WORKER_AFTER="soon"),
    )  # fmt: skip
    assert created.code == 2, created.err
    assert "JOBQUEUE_NO_WORKER_AFTER='soon' is not a duration" in created.err.splitlines()[-1]


def test_workers_and_check_list_the_live_workers(migrated: tuple[str, str], tmp_path: Path) -> None:
    import json

    url, table = migrated
    base = ("--database-url", url, "--table", table)
    none = command(*base, "workers", cwd=tmp_path)
    assert none.code == 0, none.err
    assert "No live worker" in none.out
    assert json.loads(command(*base, "workers", "--json", cwd=tmp_path).out) == []
    checked = command(*base, "check", cwd=tmp_path)
    assert checked.code == 0, checked.out
    assert "ok   workers     no live worker (no job is waiting)" in checked.out
    command(*base, "generate", "waiting", cwd=tmp_path)
    checked = command(*base, "check", cwd=tmp_path)
    (line,) = [ln for ln in checked.out.splitlines() if " workers " in ln]
    assert line.startswith("warn") and "no live worker, and 1 job(s)" in line, line
    options = (
        "--worker-id",
        "cli-w1",
        "--concurrency",
        "3",
        "--queue",
        "default",
        "--queue",
        "mail",
    )
    with worker_running(tmp_path, base, *options):

        def listed() -> Any:
            found = json.loads(command(*base, "workers", "--json", cwd=tmp_path).out)
            return found or None

        (w,) = until(listed)
        assert (w["worker_id"], w["queues"], w["kinds"], w["concurrency"]) == (
            "cli-w1",
            ["default", "mail"],
            ["image"],
            3,
        )
        assert w["beat_age_sec"] >= 0 and w["last_beat_at"] >= w["started_at"]
        table_out = command(*base, "workers", cwd=tmp_path)
        assert table_out.code == 0, table_out.err
        (row,) = [ln for ln in table_out.out.splitlines() if "cli-w1" in ln]
        assert "default, mail" in row and "image" in row and " 3 " in row and "ago" in row
        checked = command(*base, "check", cwd=tmp_path)
    (line,) = [ln for ln in checked.out.splitlines() if " workers " in ln]
    assert (
        line.startswith("ok")
        and "1 live: cli-w1 (queues default, mail, concurrency 3, beat" in line
    )


# -- permissions at start (PostgreSQL roles) ------------------------------------------------


@pytest.mark.postgres
def test_a_wait_that_may_not_read_the_workers_table_goes_on_without_a_warning(
    postgres_url: str, table_name: str
) -> None:
    """A caller allowed to read jobs but not the live workers (a web app's own role, a
    Supabase user) cannot know whether a worker runs: it waits as before and guesses
    nothing."""
    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as owner:
        job = owner.enqueue("image", {"prompt": "x"})
    heard: list[str] = []
    with (
        role(postgres_url, f'GRANT SELECT ON "{table_name}" TO {{role}}') as url,
        JobQueue(url, table=table_name) as reader,
    ):
        with pytest.raises(PermissionDenied):
            reader.live_workers()
        with pytest.raises(WaitTimeout):
            reader.wait(
                job.id, interval=0.05, timeout=0.5, no_worker_after=0.1, on_no_worker=heard.append
            )
    assert heard == []


# -- Supabase: the worker role writes the table, users never see it ---------------------------


@pytest.mark.postgres
def test_supabase_policies_let_the_worker_role_keep_its_row_and_hide_it_from_users(
    postgres_url: str, table_name: str
) -> None:
    from jobqueue.migrations.supabase import apply_rls
    from jobqueue.sql.rls import supabase_sql
    from tests.support.supabase import emulate_supabase, engine_as

    assert f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table_name}_workers"' in supabase_sql(
        table_name
    )
    emulate_supabase(postgres_url)
    migrate(postgres_url, table=table_name)
    apply_rls(postgres_url, table=table_name)
    apply_rls(postgres_url, table=table_name)  # twice is safe
    engines = [
        engine_as(postgres_url, "service_role"),
        engine_as(postgres_url, "authenticated", str(uuid.uuid4())),
    ]
    try:
        worker_q, user_q = (JobQueue(e, table=table_name) for e in engines)
        worker_q.check_worker_access()
        worker_q.worker_beat(WorkerPresence("supabase-w", ("default",), ("image",), 2), ttl=30)
        assert [w.worker_id for w in worker_q.live_workers()] == ["supabase-w"]
        with pytest.raises(PermissionDenied):
            user_q.live_workers()
        with pytest.raises(PermissionDenied):
            user_q.worker_beat(WorkerPresence("intruder", ("default",), None, 1), ttl=30)
        assert worker_q.worker_gone("supabase-w") is True
    finally:
        for e in engines:
            e.dispose()
    with make_engine(postgres_url).connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(workers_table(table_name))).scalar() == 0
        )
