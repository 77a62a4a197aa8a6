"""A job that is no longer this attempt's: cancelled, its lease lost or taken over, claimed
again by the same worker; heartbeats keep the jobs that are still ours. Leases are short so
that heartbeats, cancellation and fencing happen within a second or two."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status
from jobqueue.worker import Worker, WorkerContext
from tests.worker.conftest import eventually, messages, run_in_background, stop

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


# -- cancellation and fencing -------------------------------------------------------------


async def test_cancelling_a_running_job_stops_its_handler(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    job = await jq.enqueue("long", {})
    started = asyncio.Event()
    stopped = asyncio.Event()
    contexts: list[WorkerContext] = []

    async def long(job: Job, ctx: WorkerContext) -> None:
        contexts.append(ctx)
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    worker = Worker(jq, {"long": long}, lease=0.6, poll_interval=0.1, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 10)
    await jq.cancel(job.id)
    await asyncio.wait_for(stopped.wait(), 10)
    assert contexts[0].cancelled.is_set()
    await stop(worker, task)
    done = await jq.get(job.id)
    assert done.status is Status.CANCELLED
    assert f"Job {job.id} status: cancelled" in messages(caplog)


async def test_a_worker_whose_lease_expired_is_fenced_off(
    jq: AsyncJobQueue,
    raw_sql: Callable[..., list[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("work", {})
    started = asyncio.Event()
    let_a_finish = asyncio.Event()

    async def slow_a(job: Job, ctx: WorkerContext) -> str:
        started.set()
        await let_a_finish.wait()
        return "from A"

    async def quick_b(job: Job, ctx: WorkerContext) -> str:
        return "from B"

    # A long lease so that A's own heartbeat does not notice before it tries to complete.
    a = Worker(jq, {"work": slow_a}, worker_id="worker-a", lease=30, listen=False)
    task = await run_in_background(a)
    await asyncio.wait_for(started.wait(), 10)
    # A stalls (a GC pause, a frozen VM): its lease runs out in the database.
    raw_sql(
        f"UPDATE {jq.table_name} SET lease_expires_at = '2000-01-01 00:00:00' WHERE id = :id",
        id=job.id.hex if jq.dialect == "sqlite" else job.id,
    )
    b = Worker(jq, {"work": quick_b}, worker_id="worker-b", lease=2, listen=False)
    assert await b.run_until_idle() == 1
    let_a_finish.set()
    await eventually(lambda: "LeaseLost" in messages(caplog))
    await stop(a, task)

    done = await jq.get(job.id)
    assert (done.status, done.result, done.locked_by) == (Status.COMPLETED, "from B", "worker-b")
    assert done.attempts == 2


async def test_lost_lease_noticed_by_heartbeat_stops_the_handler(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("work", {})
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def hang(job: Job, ctx: WorkerContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    a = Worker(jq, {"work": hang}, worker_id="worker-a", lease=0.6, listen=False)
    task = await run_in_background(a)
    await asyncio.wait_for(started.wait(), 10)
    # Another worker takes the job over (as after an expired lease) through the queue API.
    await jq.release(await jq.get(job.id))  # A's attempt ends; nothing tells A
    [taken] = await jq.claim("worker-b", queues=["default"])
    await asyncio.wait_for(stopped.wait(), 10)
    await stop(a, task)
    assert "LeaseLost" in messages(caplog)
    now = await jq.get(taken.id)
    assert (now.status, now.locked_by) == (Status.PROCESSING, "worker-b")


async def test_reclaiming_its_own_expired_job_stops_the_stale_attempt(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]]
) -> None:
    """After a stall, a worker may claim the very job it still runs (its lease expired):
    the stale attempt is stopped and the new one's result stands."""
    job = await jq.enqueue("work", {})
    first_started = asyncio.Event()
    first_stopped = asyncio.Event()

    async def work(job: Job, ctx: WorkerContext) -> str:
        if job.attempts == 1:
            first_started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                first_stopped.set()
                raise
        return f"attempt {job.attempts}"

    worker = Worker(jq, {"work": work}, concurrency=2, lease=30, poll_interval=0.1, listen=False)
    task = await run_in_background(worker)
    try:
        await asyncio.wait_for(first_started.wait(), 10)
        raw_sql(
            f"UPDATE {jq.table_name} SET lease_expires_at = '2000-01-01 00:00:00' WHERE id = :id",
            id=job.id.hex if jq.dialect == "sqlite" else job.id,
        )
        done = await jq.wait(job.id, interval=0.05, timeout=10)
        assert (done.status, done.result, done.attempts) == (Status.COMPLETED, "attempt 2", 2)
        await asyncio.wait_for(first_stopped.wait(), 10)
    finally:
        await stop(worker, task)


async def test_heartbeats_keep_a_job_longer_than_its_lease(jq: AsyncJobQueue) -> None:
    """A handler running for several leases keeps its job: no reap, no second claim."""
    job = await jq.enqueue("long", {})
    started = asyncio.Event()

    async def long(job: Job, ctx: WorkerContext) -> str:
        started.set()
        await asyncio.sleep(2.0)  # more than three leases
        return "still mine"

    worker = Worker(jq, {"long": long}, lease=0.6, listen=False)
    task = await run_in_background(worker)
    try:
        await asyncio.wait_for(started.wait(), 10)
        for _ in range(6):
            await asyncio.sleep(0.25)
            assert await jq.reap() == []
            assert await jq.claim("thief", queues=["default"]) == []
        done = await jq.wait(job.id, interval=0.05, timeout=10)
        assert (done.status, done.result, done.attempts) == (Status.COMPLETED, "still mine", 1)
    finally:
        await stop(worker, task)
