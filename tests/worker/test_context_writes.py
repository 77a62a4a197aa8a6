"""A handler's writes through its `WorkerContext` across a database hiccup (SQLite and
PostgreSQL).

The hiccup is real: a trigger refuses, with a real database error, every write of a
job's progress or provider task id while the table ``<jobs>_down`` holds a row, and the
test empties that table to end it. Heartbeats, completions and every other write go
through, so what is checked is the context's own retry rule: a task id write is retried
until it is written (or the attempt is stopped), a progress write for up to one lease and
then dropped, and a refusal (`LeaseLost`) is never retried.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status
from jobqueue.errors import LeaseLost
from jobqueue.worker import Worker, WorkerContext
from tests.conftest import sql_runner

from .conftest import eventually, messages, run_in_background, stop

HICCUP = "simulated hiccup while writing to the job"


def _install_hiccups(run: Callable[..., list[Any]], url: str, table: str) -> None:
    """A trigger refusing writes of progress and task ids while ``<table>_down`` has a row."""
    down = f"{table}_down"
    run(f"CREATE TABLE {down} (x INTEGER)")
    if url.startswith("postgresql"):
        run(
            f"CREATE FUNCTION {table}_hiccup() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF EXISTS (SELECT 1 FROM {down}) THEN RAISE EXCEPTION '{HICCUP}'; "
            "END IF; RETURN NEW; END $$"
        )
        run(
            f"CREATE TRIGGER {table}_hiccup BEFORE UPDATE ON {table} FOR EACH ROW "
            "WHEN (OLD.status = 'processing' AND NEW.status = 'processing' AND "
            "(NEW.progress <> OLD.progress OR "
            "NEW.progress_message IS DISTINCT FROM OLD.progress_message OR "
            "NEW.remote_task_id IS DISTINCT FROM OLD.remote_task_id)) "
            f"EXECUTE FUNCTION {table}_hiccup()"
        )
    else:
        run(
            f"CREATE TRIGGER {table}_hiccup BEFORE UPDATE ON {table} FOR EACH ROW "
            "WHEN OLD.status = 'processing' AND NEW.status = 'processing' AND "
            "(NEW.progress <> OLD.progress OR "
            "NEW.progress_message IS NOT OLD.progress_message OR "
            "NEW.remote_task_id IS NOT OLD.remote_task_id) "
            f"AND EXISTS (SELECT 1 FROM {down}) "
            f"BEGIN SELECT RAISE(ABORT, '{HICCUP}'); END"
        )


class Hiccup:
    """Starts and ends the hiccup (from the event loop, without blocking it)."""

    def __init__(self, run: Callable[..., list[Any]], table: str) -> None:
        self.run = run
        self.down = f"{table}_down"

    async def begin(self) -> None:
        await asyncio.to_thread(self.run, f"INSERT INTO {self.down} VALUES (1)")

    async def end(self) -> None:
        await asyncio.to_thread(self.run, f"DELETE FROM {self.down}")


@pytest.fixture
def hiccup(migrated: tuple[str, str]) -> Iterator[Hiccup]:
    url, table = migrated
    with sql_runner(url) as run:
        _install_hiccups(run, url, table)
        yield Hiccup(run, table)


async def all_final(jq: AsyncJobQueue, *ids: Any) -> bool:
    jobs = [await jq.get(i) for i in ids]
    return all(job.is_final for job in jobs)


def _retries(caplog: pytest.LogCaptureFixture, what: str) -> int:
    """How many failed writes of ``what`` were logged with a retry."""
    return sum(
        1
        for r in caplog.records
        if what in r.getMessage() and "retrying" in r.getMessage() and HICCUP in r.getMessage()
    )


async def test_a_task_id_write_that_fails_for_a_while_is_retried_until_written(
    jq: AsyncJobQueue, hiccup: Hiccup, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses the task id writes of an async and a sync handler for as long
    as the test likes: both are retried, land once it ends, and the jobs (one attempt
    each) complete in that attempt with their task id saved; each handler ran once."""
    caplog.set_level(logging.INFO, logger="jobqueue")
    runs: collections.Counter[Any] = collections.Counter()

    async def submit(job: Job, ctx: WorkerContext) -> str | None:
        runs[job.id] += 1
        await ctx.save_remote_task_id(f"task-{job.id}")
        return ctx.remote_task_id

    def submit_sync(job: Job, ctx: WorkerContext) -> str | None:
        runs[job.id] += 1
        ctx.run_in_loop(ctx.save_remote_task_id(f"task-{job.id}"))
        return ctx.remote_task_id

    await hiccup.begin()
    a = await jq.enqueue("submit", {}, max_attempts=1)
    b = await jq.enqueue("submit_sync", {}, max_attempts=1)
    worker = Worker(
        jq, {"submit": submit, "submit_sync": submit_sync}, listen=False, poll_interval=0.05
    )
    task = await run_in_background(worker)
    try:
        # Both writes failed at least twice: the handlers are waiting on them.
        await eventually(lambda: _retries(caplog, "task id") >= 4, 30)
        await hiccup.end()
        await eventually(lambda: all_final(jq, a.id, b.id), 30)
    finally:
        await stop(worker, task)
    for job_id in (a.id, b.id):
        job = await jq.get(job_id)
        assert (job.status, job.attempts, job.errors) == (Status.COMPLETED, 1, []), job
        assert job.remote_task_id == f"task-{job_id}"
        assert job.result == f"task-{job_id}"
    assert runs == {a.id: 1, b.id: 1}


async def test_a_task_id_write_is_tried_again_within_a_quarter_second_however_long_it_fails(
    jq: AsyncJobQueue, hiccup: Hiccup, caplog: pytest.LogCaptureFixture
) -> None:
    """The task id's save races the lease: however long the database refuses it, the next
    try comes within `TASK_ID_RETRY_CAP` seconds, so the save lands the moment writes are
    taken again (a later attempt that finds no id would pay again)."""
    from jobqueue.worker.context import TASK_ID_RETRY_CAP

    caplog.set_level(logging.INFO, logger="jobqueue")

    async def submit(job: Job, ctx: WorkerContext) -> None:
        await ctx.save_remote_task_id(f"task-{job.id}")

    await hiccup.begin()
    job = await jq.enqueue("submit", {}, max_attempts=1)
    worker = Worker(jq, {"submit": submit}, listen=False, poll_interval=0.05)
    task = await run_in_background(worker)
    try:
        # Far more failures than it takes the backoff to reach its cap.
        await eventually(lambda: _retries(caplog, "task id") >= 12, 30)
        await hiccup.end()
        await eventually(lambda: all_final(jq, job.id), 30)
    finally:
        await stop(worker, task)
    delays = [
        float(m.group(1))
        for r in caplog.records
        if "task id" in r.getMessage()
        and (m := re.search(r"retrying in ([0-9.]+)s", r.getMessage())) is not None
    ]
    assert len(delays) >= 12 and max(delays) <= TASK_ID_RETRY_CAP, delays
    assert (await jq.get(job.id)).remote_task_id == f"task-{job.id}"


async def test_a_progress_write_that_fails_for_a_while_is_retried_and_lands(
    jq: AsyncJobQueue, hiccup: Hiccup, caplog: pytest.LogCaptureFixture
) -> None:
    """A progress write refused for a while (less than the lease) is retried and lands:
    the job shows it while its handler still runs; nothing is dropped."""
    caplog.set_level(logging.INFO, logger="jobqueue")
    proceed = asyncio.Event()
    reported = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> str:
        await ctx.report_progress(42, "written during a hiccup")
        reported.set()
        await proceed.wait()
        return "done"

    await hiccup.begin()
    job = await jq.enqueue("slow", {}, max_attempts=1)
    worker = Worker(jq, {"slow": slow}, listen=False, poll_interval=0.05, lease=30)
    task = await run_in_background(worker)
    try:
        await eventually(lambda: _retries(caplog, "progress") >= 2, 30)
        assert not reported.is_set()  # the handler waits on its write
        await hiccup.end()
        await asyncio.wait_for(reported.wait(), 30)
        now = await jq.get(job.id)
        assert (now.status, now.progress, now.progress_message) == (
            Status.PROCESSING,
            42,
            "written during a hiccup",
        )
        proceed.set()
        await eventually(lambda: all_final(jq, job.id), 30)
    finally:
        proceed.set()
        await stop(worker, task)
    done = await jq.get(job.id)
    assert (done.status, done.attempts, done.errors) == (Status.COMPLETED, 1, [])
    assert "not recorded" not in messages(caplog)


async def test_a_progress_write_that_keeps_failing_is_dropped_after_a_lease(
    jq: AsyncJobQueue, hiccup: Hiccup, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress is best-effort: a write still refused after one lease (retried meanwhile)
    is logged as dropped and the handler goes on; the job completes in its one attempt."""
    caplog.set_level(logging.INFO, logger="jobqueue")

    async def slow(job: Job, ctx: WorkerContext) -> str:
        await ctx.report_progress(50, "never written")
        return "done"

    await hiccup.begin()
    job = await jq.enqueue("slow", {}, max_attempts=1)
    worker = Worker(jq, {"slow": slow}, listen=False, poll_interval=0.05, lease=2)
    task = await run_in_background(worker)
    try:
        await eventually(lambda: all_final(jq, job.id), 30)
    finally:
        await stop(worker, task)
    done = await jq.get(job.id)
    assert (done.status, done.attempts, done.errors) == (Status.COMPLETED, 1, [])
    assert _retries(caplog, "progress") >= 2
    dropped = [r for r in caplog.records if "not recorded" in r.getMessage()]
    assert len(dropped) == 1 and dropped[0].levelno == logging.WARNING
    assert HICCUP in dropped[0].getMessage()


async def test_a_task_id_write_stops_retrying_when_the_attempt_is_stopped(
    jq: AsyncJobQueue, hiccup: Hiccup, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync handler's task id write, retried across a hiccup, ends with `LeaseLost` once
    the worker stops the attempt (here: the job is cancelled), instead of holding the
    handler's thread until the hiccup ends."""
    caplog.set_level(logging.INFO, logger="jobqueue")
    raised: list[BaseException] = []

    def submit_sync(job: Job, ctx: WorkerContext) -> str:
        try:
            ctx.run_in_loop(ctx.save_remote_task_id("task-1"))
        except BaseException as exc:
            raised.append(exc)
            raise
        return "saved"

    await hiccup.begin()
    job = await jq.enqueue("submit_sync", {}, max_attempts=1)
    # The hiccup stops heartbeats too: the lease must outlast the wait for the first retry
    # and the cancel on a loaded machine (at 2 s the reaper once failed the job first).
    worker = Worker(jq, {"submit_sync": submit_sync}, listen=False, poll_interval=0.05, lease=8)
    task = await run_in_background(worker)
    try:
        await eventually(lambda: _retries(caplog, "task id") >= 1, 30)
        await jq.cancel(job.id)
        await eventually(lambda: raised, 30)
    finally:
        await stop(worker, task)
    assert isinstance(raised[0], LeaseLost), raised
    assert (await jq.get(job.id)).status is Status.CANCELLED


async def test_a_task_id_write_on_a_lost_job_raises_lease_lost_at_once(
    jq: AsyncJobQueue,
) -> None:
    """A refusal is never retried: the job is no longer this attempt's."""
    await jq.enqueue("image", {})
    (job,) = await jq.claim("w1")
    await jq.cancel(job.id)
    ctx = WorkerContext(jq, job, "w1", asyncio.get_running_loop())
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(ctx.save_remote_task_id("task-1"), 5)
    assert ctx.remote_task_id is None
