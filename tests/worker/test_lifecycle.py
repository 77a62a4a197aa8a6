"""A worker's lifecycle: its one state and the moves between states (without a database),
and every way a run starts and ends on real databases — graceful and immediate stops, a
stop from another thread or before serving, SIGTERM/SIGINT, a cancellation from outside."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status
from jobqueue.worker import Worker, WorkerContext
from jobqueue.worker.lifecycle import MOVES, Lifecycle, State, WorkerStateError
from tests.worker.conftest import eventually, messages, run_in_background, stop, table_locked

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


# -- the state and its moves (no database) ----------------------------------------------------


def reachable_from(start: State) -> set[State]:
    seen = {start}
    todo = [start]
    while todo:
        for to in MOVES[todo.pop()]:
            if to not in seen:
                seen.add(to)
                todo.append(to)
    return seen


def test_every_state_is_reachable_and_every_run_can_end() -> None:
    assert reachable_from(State.IDLE) == set(State)
    for state in State:
        assert State.IDLE in reachable_from(state) or state is State.IDLE, state


async def test_a_run_serves_then_finishes_and_can_run_again() -> None:
    life = Lifecycle("w", grace_period=1.0)
    for _ in range(2):
        life.begin(until_idle=True)
        assert (life.state, life.running, life.claiming) == (State.STARTING, True, False)
        life.started()
        assert (life.state, life.claiming) == (State.SERVING, True)
        life.slots_taken()
        assert life.full and life.waits_for_slots
        life.slot_wait_over()
        life.close()
        assert (life.state, life.closing, life.stop_asked) == (State.FINISHING, True, False)
        life.end()
        assert (life.state, life.running) == (State.IDLE, False)


async def test_a_second_run_at_once_is_refused() -> None:
    life = Lifecycle("w", grace_period=1.0)
    life.begin(until_idle=False)
    with pytest.raises(RuntimeError, match="already running"):
        life.begin(until_idle=False)
    assert life.state is State.STARTING


async def test_a_stop_only_hardens_and_wakes_the_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    life = Lifecycle("w-1", grace_period=3.0)
    life.begin(until_idle=False)
    life.started()
    life.request_stop()
    assert (life.state, life.stop_asked, life.claiming) == (State.STOPPING, True, False)
    assert life.stopped.is_set() and life.wake.is_set()
    life.request_stop()  # asked again: nothing new, nothing logged
    assert life.state is State.STOPPING
    life.request_stop(immediate=True)
    assert (life.state, life.immediate) == (State.STOPPING_NOW, True)
    life.request_stop()  # a graceful stop never softens an immediate one
    assert life.state is State.STOPPING_NOW
    life.close()
    assert life.state is State.CLOSING_NOW
    life.end()
    text = messages(caplog)
    assert text.count("Worker w-1 stopping: no new jobs; running jobs get 3s to finish") == 1
    assert text.count("Worker w-1 stopping now: running jobs are released") == 1


async def test_a_stop_asked_before_the_run_is_kept_for_it() -> None:
    life = Lifecycle("w", grace_period=1.0)
    life.request_stop()
    assert (life.state, life.running) == (State.STOP_ASKED, False)
    life.begin(until_idle=False)
    assert (life.state, life.stopped.is_set()) == (State.STOPPING, True)
    life.started()  # announcing saw the stop: the run never serves
    assert life.state is State.STOPPING
    life.close()
    life.end()
    life.request_stop()
    life.request_stop(immediate=True)
    assert life.state is State.STOP_NOW_ASKED
    life.begin(until_idle=True)
    assert life.state is State.STOPPING_NOW


async def test_a_stop_while_finishing_is_a_stop_and_a_cancellation_is_immediate() -> None:
    life = Lifecycle("w", grace_period=1.0)
    life.begin(until_idle=True)
    life.started()
    life.close()
    assert (life.state, life.stop_asked) == (State.FINISHING, False)
    life.request_stop()
    assert (life.state, life.stop_asked, life.immediate) == (State.CLOSING, True, False)
    life.interrupted()
    assert (life.state, life.immediate) == (State.CLOSING_NOW, True)
    life.end()
    # Cancelled while serving: as an immediate stop, from whatever state it was in.
    life.begin(until_idle=False)
    life.started()
    life.slots_taken()
    life.interrupted()
    assert life.state is State.STOPPING_NOW
    life.close()
    life.end()


async def test_failing_writes_are_given_up_only_while_stopping() -> None:
    life = Lifecycle("w", grace_period=0.0)
    life.begin(until_idle=False)
    life.started()
    assert not life.gives_up_writes()  # serving: never
    life.request_stop()
    life.draining(lease=0.05)  # graceful: after the grace period and a lease
    assert not life.gives_up_writes()
    await asyncio.sleep(0.1)
    assert life.gives_up_writes()
    life.end()
    life.begin(until_idle=False)
    life.request_stop(immediate=True)
    assert life.gives_up_writes()  # immediate: at once
    life.end()


def test_moves_outside_the_table_are_refused() -> None:
    life = Lifecycle("w", grace_period=1.0)
    with pytest.raises(WorkerStateError, match="from idle to serving"):
        life.move(State.SERVING)
    life.state = State.CLOSING
    with pytest.raises(WorkerStateError, match="from closing to serving"):
        life.move(State.SERVING)
    for state in State:
        for to in State:
            life.state = state
            if to in MOVES[state]:
                life.move(to)
                assert life.state is to
            else:
                with pytest.raises(WorkerStateError):
                    life.move(to)
                assert life.state is state


# -- stopping a worker ------------------------------------------------------------------------


async def test_graceful_stop_finishes_quick_jobs_and_releases_the_rest(
    jq: AsyncJobQueue,
) -> None:
    slow_ids = [(await jq.enqueue("slow", {})).id for _ in range(3)]
    quick_id = (await jq.enqueue("quick", {})).id
    started: set[Any] = set()
    finish_quick = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.add(job.id)
        await asyncio.sleep(60)

    async def quick(job: Job, ctx: WorkerContext) -> str:
        started.add(job.id)
        await finish_quick.wait()
        return "made it"

    worker = Worker(
        jq, {"slow": slow, "quick": quick}, concurrency=4, lease=2, grace_period=0.5, listen=False
    )
    task = await run_in_background(worker)
    await eventually(lambda: len(started) == 4)
    worker.stop()
    await asyncio.sleep(0.05)
    finish_quick.set()  # finishes inside the grace period
    await asyncio.wait_for(task, 15)

    quick_job = await jq.get(quick_id)
    assert (quick_job.status, quick_job.result) == (Status.COMPLETED, "made it")
    for job_id in slow_ids:
        job = await jq.get(job_id)
        assert job.status is Status.PENDING
        assert job.locked_by is None
        # The released attempt was given back; the job's own limit stays.
        assert (job.attempts, job.max_attempts) == (0, 3)
        assert "released" in job.errors[-1]["error"]
    assert not await jq.list(status="processing")


async def test_a_graceful_stop_waits_for_the_save_of_a_paid_requests_task_id(
    jq: AsyncJobQueue, migrated: tuple[str, str]
) -> None:
    """A handler has sent a paid request (its lease confirmed first, as a generator does)
    and saves the task id while a lock holds every write up past the grace period. The
    stop waits for the save instead of cancelling the handler, so the released job keeps
    the id and its next attempt resumes the task instead of paying again."""
    url, table = migrated
    job = await jq.enqueue("paid", {})
    sent, go = asyncio.Event(), asyncio.Event()
    saved: list[str] = []

    async def paid(job: Job, ctx: WorkerContext) -> None:
        await ctx.lease_confirmed()
        sent.set()  # the paid request goes out here
        await go.wait()
        await ctx.save_remote_task_id("task-1")
        saved.append("task-1")
        await asyncio.sleep(60)  # polls the task

    worker = Worker(jq, {"paid": paid}, lease=3, grace_period=0.2, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(sent.wait(), 10)
    async with table_locked(url, table):
        go.set()
        worker.stop()
        await asyncio.sleep(1.0)  # five grace periods
        assert not saved and not task.done()  # the handler was not stopped
    await asyncio.wait_for(task, 15)
    assert saved == ["task-1"]
    released = await jq.get(job.id)
    assert released.status is Status.PENDING
    assert released.remote_task_id == "task-1"
    assert (released.attempts, released.locked_by) == (0, None)


async def test_a_second_stop_ends_the_wait_for_a_paid_requests_task_id(
    jq: AsyncJobQueue, migrated: tuple[str, str]
) -> None:
    url, table = migrated
    if url.startswith("sqlite"):
        pytest.skip(
            "a SQLite statement waiting for the write lock runs on its connection's thread "
            "and cannot be interrupted: any stop comes after it (up to its busy timeout)"
        )
    await jq.enqueue("paid", {})
    sent, go, stopped = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def paid(job: Job, ctx: WorkerContext) -> None:
        await ctx.lease_confirmed()
        sent.set()
        await go.wait()
        try:
            await ctx.save_remote_task_id("task-1")
        finally:  # cancelled, or LeaseLost: the stop came while a write was retried
            stopped.set()

    worker = Worker(jq, {"paid": paid}, lease=3, grace_period=0.1, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(sent.wait(), 10)
    async with table_locked(url, table):
        go.set()
        worker.stop()
        await asyncio.sleep(0.5)
        assert not stopped.is_set()
        worker.stop(immediate=True)
        await asyncio.wait_for(stopped.wait(), 2)  # while the lock still holds
    await asyncio.wait_for(task, 15)


async def test_jobs_claimed_with_completions_in_flight_at_the_stop_are_handed_back(
    jq: AsyncJobQueue, migrated: tuple[str, str]
) -> None:
    """A busy worker completes a batch and claims the next jobs in one statement. When the
    stop comes while that statement waits (here on a lock), the jobs it brings back are
    handed back unrun (pending, their attempt given back), not started by a run that is
    ending, whose handlers would outlive it."""
    url, table = migrated
    first = [(await jq.enqueue("work", {"n": n})).id for n in range(2)]
    rest = [(await jq.enqueue("work", {"n": n})).id for n in range(2, 4)]
    started: list[Any] = []
    go = asyncio.Event()

    async def work(job: Job, ctx: WorkerContext) -> str:
        started.append(job.id)
        await go.wait()
        return "done"

    worker = Worker(jq, {"work": work}, concurrency=2, lease=5, grace_period=5, listen=False)
    task = await run_in_background(worker)
    await eventually(lambda: len(started) == 2)
    async with table_locked(url, table):
        go.set()  # both complete; their batch, with the claim of the next two, waits
        await asyncio.sleep(0.3)
        worker.stop()
        await asyncio.sleep(0.3)
    await asyncio.wait_for(task, 15)
    assert sorted(started) == sorted(first)
    for job_id in first:
        assert (await jq.get(job_id)).status is Status.COMPLETED
    for job_id in rest:
        job = await jq.get(job_id)
        assert (job.status, job.attempts, job.locked_by) == (Status.PENDING, 0, None)


async def test_immediate_stop_skips_the_grace_period(jq: AsyncJobQueue) -> None:
    job = await jq.enqueue("slow", {})
    started = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = Worker(jq, {"slow": slow}, lease=2, grace_period=60, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    await asyncio.sleep(0.1)
    assert not task.done()  # still inside the 60 s grace period
    worker.stop(immediate=True)
    await asyncio.wait_for(task, 10)
    assert (await jq.get(job.id)).status is Status.PENDING


async def test_stop_from_another_thread(jq: AsyncJobQueue) -> None:
    async def noop(job: Job, ctx: WorkerContext) -> None:
        return None

    worker = Worker(jq, {"noop": noop}, lease=2, poll_interval=30, listen=False)
    task = await run_in_background(worker)
    await eventually(lambda: worker.claims >= 1)
    threading.Thread(target=worker.stop).start()
    await asyncio.wait_for(task, 10)


async def test_a_handler_that_finishes_despite_the_stop_keeps_its_result(
    jq: AsyncJobQueue,
) -> None:
    job = await jq.enqueue("stubborn", {})
    started = asyncio.Event()

    async def stubborn(job: Job, ctx: WorkerContext) -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "saved my work"  # swallows the cancellation and returns a result
        return "slept"

    worker = Worker(jq, {"stubborn": stubborn}, lease=2, grace_period=0.1, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 10)
    await stop(worker, task)
    done = await jq.get(job.id)
    assert (done.status, done.result) == (Status.COMPLETED, "saved my work")


async def test_sigterm_stops_gracefully_and_a_second_one_at_once(jq: AsyncJobQueue) -> None:
    import os
    import signal

    job = await jq.enqueue("slow", {})
    started = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = Worker(jq, {"slow": slow}, lease=2, grace_period=60, listen=False)
    worker.install_signal_handlers()  # before run: installed when serving starts
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.2)
    assert not task.done()  # graceful: the running job has 60 s to finish
    assert (await jq.get(job.id)).status is Status.PROCESSING
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(task, 10)
    assert (await jq.get(job.id)).status is Status.PENDING
    # The handlers are gone again: the loop no longer routes SIGTERM to the worker.
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


async def test_a_stop_before_the_run_ends_it_before_any_claim(jq: AsyncJobQueue) -> None:
    job = await jq.enqueue("echo", {})

    async def echo(job: Job, ctx: WorkerContext) -> str:
        return "hi"

    worker = Worker(jq, {"echo": echo}, lease=2, listen=False)
    task = asyncio.create_task(worker.run())
    worker.stop()  # the task has not started yet
    await asyncio.wait_for(task, 10)
    assert worker.claims == 0
    worker.stop(immediate=True)
    assert await asyncio.wait_for(worker.run_until_idle(), 10) == 0
    assert (await jq.get(job.id)).status is Status.PENDING
    # The stops were for those runs only: the next one serves.
    assert await worker.run_until_idle() == 1
    assert (await jq.get(job.id)).status is Status.COMPLETED


async def test_a_run_cancelled_from_outside_releases_its_jobs(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    job = await jq.enqueue("slow", {})
    started = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = Worker(jq, {"slow": slow}, lease=2, grace_period=60, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)  # at once: no grace period
    released = await jq.get(job.id)
    assert (released.status, released.attempts, released.locked_by) == (Status.PENDING, 0, None)
    assert "released" in released.errors[-1]["error"]
    assert f"Job {job.id} status: pending (released: the worker stopped)" in messages(caplog)
    # Serving ended cleanly: the worker runs again.
    worker.stop()
    await asyncio.wait_for(worker.run(), 10)
