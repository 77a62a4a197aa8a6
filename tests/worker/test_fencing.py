"""A job that is no longer this attempt's: cancelled, its lease lost or taken over, claimed
again by the same worker; heartbeats keep the jobs that are still ours. Leases are short so
that heartbeats, cancellation and fencing happen within a second or two."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status
from jobqueue.operations import Completion
from jobqueue.worker import Worker, WorkerContext
from jobqueue.worker.completer import Completer
from jobqueue.worker.lifecycle import Lifecycle
from jobqueue.worker.maintenance import Heartbeats
from jobqueue.worker.slots import Slot, Slots
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


async def test_a_stall_past_the_lease_costs_only_the_stalled_attempt(jq: AsyncJobQueue) -> None:
    """A blocking call stops the worker's event loop for longer than the lease. When the
    loop resumes, the claim loop takes the worker's own expired job as attempt 2 while the
    heartbeat round sent at the same moment still covers attempt 1: its answer says attempt
    1 is lost, which must not stop attempt 2. The stall costs the stalled attempt; the
    retry completes (with ``max_attempts=2``, a stopped attempt 2 would fail the job)."""
    job = await jq.enqueue("work", {}, max_attempts=2)
    stalls = 0
    stopped: list[int] = []

    async def work(job: Job, ctx: WorkerContext) -> str:
        nonlocal stalls
        try:
            if job.attempts == 1:
                # When the heartbeat wins the race and extends the lease, the job is not
                # claimed again: stall again (the scenario needs the claim to come first).
                while stalls < 5:
                    # Stall just after a heartbeat: its timer fires after the claim loop's
                    # when the loop resumes.
                    await eventually(_lease_moved(jq, job), timeout=10)
                    await asyncio.sleep(0.03)
                    stalls += 1
                    time.sleep(1.5)  # noqa: ASYNC251 (the stall: no heartbeat, no claim)
                    await asyncio.sleep(0.5)  # stopped here once the job was claimed again
            else:
                await asyncio.sleep(0.5)  # still running when the late heartbeat answers
        except asyncio.CancelledError:
            stopped.append(job.attempts)
            raise
        return f"attempt {job.attempts}"

    worker = Worker(jq, {"work": work}, concurrency=2, lease=1, poll_interval=0.05, listen=False)
    task = await run_in_background(worker)
    try:
        done = await jq.wait(job.id, interval=0.05, timeout=30)
    finally:
        await stop(worker, task)
    assert (done.status, done.result, done.attempts) == (Status.COMPLETED, "attempt 2", 2)
    assert stopped == [1]


def _lease_moved(jq: AsyncJobQueue, job: Job) -> Callable[[], Awaitable[bool]]:
    """A check that the job's lease moved (a heartbeat) since the check was made."""
    before: list[Any] = []

    async def moved() -> bool:
        lease = (await jq.get(job.id)).lease_expires_at
        if not before:
            before.append(lease)
        return lease != before[0]

    return moved


# -- every answer is about the claim it was sent for --------------------------------------


async def _expire(jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], job: Job) -> None:
    await asyncio.to_thread(
        raw_sql,
        f"UPDATE {jq.table_name} SET lease_expires_at = '2000-01-01 00:00:00' WHERE id = :id",
        id=job.id.hex if jq.dialect == "sqlite" else job.id,
    )


def _slot(jq: AsyncJobQueue, job: Job, task: asyncio.Task[Any] | None = None) -> Slot:
    ctx = WorkerContext(jq, job, WORKER, asyncio.get_running_loop())
    return Slot(job, ctx, time.monotonic(), task=task)


WORKER = "the-worker"


async def test_a_heartbeat_answer_for_an_older_claim_leaves_the_new_one_alone(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """A heartbeat round sent for attempt 1 answers after the worker took the job again as
    attempt 2 (its own expired job): the answer says attempt 1 is lost, and attempt 2 runs
    on. Deterministic: the round's claims are taken before attempt 2 is put in its place."""
    caplog.set_level(logging.DEBUG, logger="jobqueue.worker")
    job = await jq.enqueue("work", {}, max_attempts=2)
    [first] = await jq.claim(WORKER, queues=["default"], lease=30)
    await _expire(jq, raw_sql, first)
    [second] = await jq.claim(WORKER, queues=["default"], lease=30)
    assert (first.id, second.attempts) == (job.id, 2)
    running = asyncio.create_task(asyncio.sleep(30))
    slots = Slots(2)
    slots.held[job.id] = _slot(jq, first)
    beat = asyncio.create_task(Heartbeats(jq, slots, WORKER, lease=30).round())
    await asyncio.sleep(0)  # the round has sent the claims it holds: attempt 1's
    slots.held[job.id] = retry = _slot(jq, second, running)  # as the claim loop does
    try:
        await asyncio.wait_for(beat, 10)
        assert not running.cancelled() and retry.stopped_because is None
        assert slots.held[job.id] is retry
        assert "LeaseLost" not in messages(caplog)
    finally:
        running.cancel()


async def test_a_heartbeat_crossing_the_jobs_own_completion_is_not_a_lost_lease(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's completion commits between the heartbeat statement's snapshot of held
    jobs and its answer: the job is completed, by this worker; nothing was lost, and
    nothing is logged above debug."""
    caplog.set_level(logging.DEBUG, logger="jobqueue.worker")
    await jq.enqueue("work", {})
    [job] = await jq.claim(WORKER, queues=["default"], lease=30)
    slots = Slots(1)
    slot = slots.held[job.id] = _slot(jq, job)
    slot.handler_done = True  # its result waits in (or is being written by) the completer
    await jq.complete(job, "done")
    await Heartbeats(jq, slots, WORKER, lease=30).round()
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    assert "LeaseLost" not in messages(caplog)
    assert slots.held[job.id] is slot  # the completer lets it go once its write returns


async def test_a_completion_batch_is_matched_to_the_claims_it_wrote(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], caplog: pytest.LogCaptureFixture
) -> None:
    """A batch holding both the stale attempt of a job and its retry (the worker claimed
    its own expired job again) writes only the retry: the stale attempt is reported as not
    written, and one attempt is counted, not two."""
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    job = await jq.enqueue("work", {}, max_attempts=2)
    [first] = await jq.claim(WORKER, queues=["default"], lease=30)
    await _expire(jq, raw_sql, first)
    [second] = await jq.claim(WORKER, queues=["default"], lease=30)
    slots = Slots(2)
    stale, retry = _slot(jq, first), _slot(jq, second)
    slots.held[job.id] = retry
    stale.handler_done = retry.handler_done = True
    lifecycle = Lifecycle(WORKER, 0.0)
    completer = Completer(
        jq,
        slots,
        lifecycle,
        worker_id=WORKER,
        queues=("default",),
        kinds=None,
        lease=30,
        start_job=lambda job: None,
        count_claim=lambda: None,
        slot_freed=lambda: None,
    )
    completer.start()
    try:
        # Both join one batch: nothing yields between the two.
        await completer.record(stale, Completion(first, "attempt 1"))
        await completer.record(retry, Completion(second, "attempt 2"))
        await eventually(completer.idle)
    finally:
        await completer.cancel()
    done = await jq.get(job.id)
    assert (done.status, done.result, done.attempts) == (Status.COMPLETED, "attempt 2", 2)
    assert completer.finished == 1
    log = messages(caplog)
    assert f"Job {job.id}: LeaseLost: the result of attempt 1 was not written" in log
    assert log.count(f"Job {job.id} status: completed") == 1
    assert job.id not in slots.held


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
