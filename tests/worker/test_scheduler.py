"""The worker's scheduler of periodic jobs: a registry's schedules written to the database
at start, ticks turned into jobs the worker then runs, and the option to leave it off.
Real databases (SQLite and PostgreSQL); the race between worker processes is in
tests/reliability/test_schedules.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from jobqueue import AsyncJobQueue, ConfigurationError, Job, Registry
from jobqueue.worker import Worker, WorkerContext
from tests.conftest import sql_runner
from tests.worker.conftest import eventually, messages, run_in_background, stop


def test_a_registry_declares_schedules_in_its_kinds_queue() -> None:
    jobs = Registry(image=False)

    @jobs.handler("report", queue="reports")
    async def report(job: Job, ctx: WorkerContext) -> None: ...

    jobs.schedule("nightly", "report", cron="0 3 * * *", timezone="Europe/Berlin")
    jobs.schedule("often", "report", every=60, queue="elsewhere", missed="skip")
    jobs.schedule("unregistered", "other", every=60)
    queues = {s.name: s.queue for s in jobs.schedules}
    assert queues == {"nightly": "reports", "often": "elsewhere", "unregistered": "default"}
    with pytest.raises(ConfigurationError, match="declared twice"):
        jobs.schedule("nightly", "report", every=60)
    with pytest.raises(ConfigurationError, match="unknown time zone") as caught:
        jobs.schedule("bad", "report", every=60, timezone="Nowhere/Else")
    assert "fix the schedule's declaration" in caught.value.hint


async def test_a_worker_declares_its_schedules_and_runs_their_jobs(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    jobs = Registry(image=False)
    ran: list[str] = []

    @jobs.handler("tick")
    async def tick(job: Job, ctx: WorkerContext) -> None:
        ran.append(job.idempotency_key or "")

    jobs.schedule("every-second", "tick", every=1, payload={"from": "registry"})
    worker = Worker(jq, jobs, poll_interval=0.05, listen=False, schedule_interval=0.1)
    task = await run_in_background(worker)
    try:
        await eventually(lambda: len(ran) >= 2, timeout=5)
    finally:
        await stop(worker, task)
    (schedule,) = await jq.list_schedules()
    assert (schedule.name, schedule.kind, schedule.payload) == (
        "every-second",
        "tick",
        {"from": "registry"},
    )
    done = await jq.list(status="completed")
    assert sorted(j.idempotency_key for j in done) == sorted(ran)
    assert all(j.idempotency_key.startswith("schedule:every-second:") for j in done)
    assert "Schedules declared: every-second" in messages(caplog)


async def test_a_stopping_worker_makes_no_new_jobs_while_it_drains(jq: AsyncJobQueue) -> None:
    """Once told to stop, the worker's scheduler stops with its claims: a job still running
    for seconds after the stop sees no tick's job enqueued meanwhile."""
    jobs = Registry(image=False)
    started, release = asyncio.Event(), asyncio.Event()

    @jobs.handler("slow")
    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.set()
        await release.wait()

    @jobs.handler("tick")
    async def tick(job: Job, ctx: WorkerContext) -> None: ...

    jobs.schedule("every-second", "tick", every=1)
    await jq.enqueue("slow", {})
    worker = Worker(jq, jobs, poll_interval=0.05, listen=False, schedule_interval=0.1)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 5)
    await eventually(lambda: jq.list(kind="tick"), timeout=5)  # the scheduler runs
    worker.stop()
    await asyncio.sleep(0.2)  # the claim loop ends, and with it the scheduler
    made = len(await jq.list(kind="tick"))
    await asyncio.sleep(2.2)  # two more ticks come while the slow job still runs
    assert len(await jq.list(kind="tick")) == made
    release.set()
    await asyncio.wait_for(task, 15)


async def test_a_worker_without_schedules_leaves_them_alone(jq: AsyncJobQueue) -> None:
    await jq.add_schedule("tick", kind="tick", every=1)
    jobs = Registry(image=False)
    jobs.schedule("declared", "tick", every=1)

    @jobs.handler("tick")
    async def tick(job: Job, ctx: WorkerContext) -> None: ...

    worker = Worker(jq, jobs, poll_interval=0.05, listen=False, schedules=False)
    task = await run_in_background(worker)
    await asyncio.sleep(1.5)
    await stop(worker, task)
    assert [s.name for s in await jq.list_schedules()] == ["tick"]
    assert await jq.list() == []
    # run_until_idle never runs the scheduler either.
    assert await Worker(jq, jobs, listen=False).run_until_idle() == 0
    assert await jq.list() == []


async def test_a_database_without_the_schedules_table_is_said_once_and_jobs_still_run(
    migrated: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, table = migrated
    # As a database migrated before the schedules came (0009) would be, but able to run
    # this version's jobs (whose rows carry the columns of later revisions).
    with sql_runner(url) as run:
        run(f"DROP TABLE {table}_schedules")
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    queue = AsyncJobQueue(url, table=table)
    ran: list[str] = []

    async def work(job: Job, ctx: WorkerContext) -> None:
        ran.append(job.kind)

    try:
        worker = Worker(
            queue, {"work": work}, poll_interval=0.05, listen=False, schedule_interval=0.05
        )
        task = await run_in_background(worker)
        try:
            await queue.enqueue("work", {})
            await eventually(lambda: ran == ["work"], timeout=5)
            await asyncio.sleep(0.3)
        finally:
            await stop(worker, task)
    finally:
        await queue.close()
    said = [m for m in messages(caplog).splitlines() if m.startswith("Schedules are not run")]
    assert len(said) == 1 and "older than this version" in said[0], said
