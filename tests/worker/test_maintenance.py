"""The worker's maintenance services: the reaper, heartbeats and the live-workers row run on
timers of their own and stop between two statements, never in the middle of one (a pooled
connection being checked out when its task is cancelled is lost to the pool)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status
from jobqueue.worker import Worker, WorkerContext
from jobqueue.worker.maintenance import Periodic
from tests.worker.conftest import eventually, messages, run_in_background, stop, table_locked

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


async def test_the_reaper_fails_a_vanished_workers_job_with_no_attempts_left(
    jq: AsyncJobQueue,
) -> None:
    job = await jq.enqueue("work", {}, max_attempts=1)
    [ghost] = await jq.claim("vanished-worker", queues=["default"], lease=0.1)

    async def work(job: Job, ctx: WorkerContext) -> None:
        raise AssertionError("a job with no attempts left must not run again")

    worker = Worker(jq, {"work": work}, lease=2, reap_interval=0.2, listen=False)
    task = await run_in_background(worker)
    try:
        done = await jq.wait(ghost.id, interval=0.05, timeout=10)
    finally:
        await stop(worker, task)
    assert done.status is Status.FAILED
    assert "lease expired while held by vanished-worker" in (done.error or "")
    assert done.id == job.id


async def test_a_stopping_worker_lets_the_reaper_finish_its_statement(
    jq: AsyncJobQueue, migrated: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The reaper is in the middle of a statement (waiting for a lock) when the worker is
    asked to stop: the statement finishes and its work counts, and no pooled connection is
    left checked out."""
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    url, table = migrated
    job = await jq.enqueue("work", {}, max_attempts=1)
    # A lease long enough that a slow start of the worker cannot see it run out before the
    # table is locked (the reaper would fail the job then, not while it waits for the lock).
    lease = 3.0
    await jq.claim("vanished-worker", queues=["default"], lease=lease)
    claimed = time.monotonic()

    async def work(job: Job, ctx: WorkerContext) -> None:
        raise AssertionError("a job with no attempts left must not run again")

    worker = Worker(jq, {"work": work}, lease=5, reap_interval=0.2, poll_interval=30, listen=False)
    task = await run_in_background(worker)
    await eventually(lambda: worker.claims >= 1)
    async with table_locked(url, table):
        assert time.monotonic() - claimed < lease, "the worker took the whole lease to start"
        # The lease runs out while the reaper's next statement waits for the lock.
        await asyncio.sleep(claimed + lease + 0.5 - time.monotonic())
        assert (await jq.get(job.id)).status is Status.PROCESSING
        worker.stop()
        await asyncio.sleep(0.3)
        assert not task.done()  # waiting for the reaper's statement
    await asyncio.wait_for(task, 15)
    done = await jq.get(job.id)
    assert done.status is Status.FAILED, done
    assert f"Job {job.id}: lease expired; moved back to failed" in messages(caplog)
    # The queue's spare (its last operation's connection) goes back once the loop turns.
    await eventually(lambda: jq.engine.pool.checkedout() == 0)


class Rounds(Periodic):
    """A duty whose rounds wait for ``go`` (a statement that takes a while) and fail while
    ``broken`` is set."""

    name = "rounds"
    failure = "a test round"

    def __init__(self, interval: float, **options: Any) -> None:
        super().__init__(interval, **options)
        self.go = asyncio.Event()
        self.go.set()
        self.broken = False
        self.started: list[float] = []
        self.finished = 0

    async def round(self) -> None:
        self.started.append(time.monotonic())
        await self.go.wait()
        if self.broken:
            raise ConnectionError("the database is restarting")
        self.finished += 1


async def test_a_timer_ends_between_rounds_and_backs_off_after_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    timer = Rounds(0.05, first=0.0)
    timer.start()
    await eventually(lambda: timer.finished >= 2)
    # Stopped in the middle of a round: the round finishes first.
    timer.go.clear()
    await eventually(lambda: len(timer.started) > timer.finished)
    stopping = asyncio.create_task(timer.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()
    rounds = timer.finished
    timer.go.set()
    await asyncio.wait_for(stopping, 5)
    assert timer.finished == rounds + 1
    # Failed rounds are logged and retried after a backoff capped at the interval.
    broken = Rounds(0.2, first=0.0)
    broken.broken = True
    broken.start()
    await eventually(lambda: len(broken.started) >= 4)
    await broken.stop()
    gaps = [b - a for a, b in zip(broken.started, broken.started[1:], strict=False)]
    assert gaps[0] < 0.15 and all(gap < 0.3 for gap in gaps), gaps
    assert "a test round failed (ConnectionError: the database is restarting)" in messages(caplog)


async def test_a_round_that_outlasts_the_stop_timeout_is_cancelled() -> None:
    timer = Rounds(0.05, first=0.0)
    timer.go.clear()
    timer.start()
    await eventually(lambda: timer.started)
    await asyncio.wait_for(timer.stop(timeout=0.1), 5)
    assert timer.finished == 0


async def test_the_expiry_timer_ends_jobs_past_their_deadline_unrun(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    late = await jq.enqueue("work", {"n": "late"}, expires_in=0.05)
    on_time = await jq.enqueue("work", {"n": "on time"}, expires_in=3600)
    await asyncio.sleep(0.2)
    ran: list[str] = []

    async def work(job: Job, ctx: WorkerContext) -> None:
        ran.append(job.payload["n"])

    worker = Worker(jq, {"work": work}, poll_interval=0.05, listen=False)
    assert await worker.run_until_idle() == 1
    assert ran == ["on time"]
    assert (await jq.get(on_time.id)).status is Status.COMPLETED
    assert (await jq.get(late.id)).status is Status.EXPIRED
    assert f"Job {late.id} status: expired (not started by its deadline)" in messages(caplog)
