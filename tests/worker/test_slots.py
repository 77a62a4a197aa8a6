"""A worker never runs more than ``concurrency`` handlers at once, whatever the order in
which its claims, completion batches and re-claims of its own expired jobs come back."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, PayloadError, Status
from jobqueue.operations import Completion
from jobqueue.worker import Worker, WorkerContext
from jobqueue.worker.completer import Completer
from jobqueue.worker.lifecycle import Lifecycle
from jobqueue.worker.slots import Slot, Slots
from tests.worker.conftest import eventually, messages, run_in_background, stop

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


async def test_a_delayed_batch_and_a_reclaim_never_run_more_than_concurrency(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job A finishes while the claim loop waits for a slot, so its completion is written
    with a claim of A's replacement (`complete_and_claim`); that statement is held back
    (as by a database lock) while A's lease runs out. Another slot frees up, and the claim
    loop takes A again (attempt 2), then more jobs if it sees room. When the delayed batch
    answers, A's old attempt is fenced off, and the batch's claim may only fill slots that
    are really free: the handlers running at once never exceed ``concurrency``."""
    running = 0
    most = 0
    finish_a = asyncio.Event()
    fail_b = asyncio.Event()
    finish_rest = asyncio.Event()
    started: dict[tuple[str, int], asyncio.Event] = {}

    def began(name: str, attempt: int = 1) -> asyncio.Event:
        return started.setdefault((name, attempt), asyncio.Event())

    async def work(job: Job, ctx: WorkerContext) -> str:
        nonlocal running, most
        running += 1
        most = max(most, running)
        began(job.payload["name"], job.attempts).set()
        try:
            name = job.payload["name"]
            if name == "a" and job.attempts == 1:
                await finish_a.wait()
            elif name == "b":
                await fail_b.wait()
                raise PayloadError("b fails at once, freeing its slot")
            else:
                await finish_rest.wait()
            return f"{name} attempt {job.attempts}"
        finally:
            running -= 1

    held_back = asyncio.Event()
    let_through = asyncio.Event()
    write = jq.complete_and_claim

    async def delayed(*args: Any, **kwargs: Any) -> Any:
        # The first batch that claims waits here, before its statement runs.
        if not held_back.is_set():
            held_back.set()
            await let_through.wait()
        return await write(*args, **kwargs)

    monkeypatch.setattr(jq, "complete_and_claim", delayed)

    a = await jq.enqueue("work", {"name": "a"}, max_attempts=3)
    b = await jq.enqueue("work", {"name": "b"})
    worker = Worker(jq, {"work": work}, concurrency=2, lease=30, poll_interval=0.05, listen=False)
    task = await run_in_background(worker)
    try:
        await asyncio.wait_for(began("a").wait(), 10)
        await asyncio.wait_for(began("b").wait(), 10)
        await eventually(lambda: worker._lifecycle.full)  # the claim loop waits for a slot
        finish_a.set()  # A's completion goes out with a claim of its replacement ...
        await asyncio.wait_for(held_back.wait(), 10)  # ... and is held back
        raw_sql(
            f"UPDATE {jq.table_name} SET lease_expires_at = '2000-01-01 00:00:00' WHERE id = :id",
            id=a.id.hex if jq.dialect == "sqlite" else a.id,
        )
        fail_b.set()  # B's slot frees up: the claim loop takes A again
        await asyncio.wait_for(began("a", 2).wait(), 10)
        others = [await jq.enqueue("work", {"name": f"e{i}"}) for i in range(2)]
        # Whatever room the claim loop sees, it has claimed it (a poll is 0.05 s).
        await asyncio.sleep(0.5)
        let_through.set()
        await eventually(lambda: worker._completer.idle() and not worker._slots.reserved)
        await asyncio.sleep(0.3)  # jobs handed back are claimed again by the poll
        finish_rest.set()
        for job in [a, *others]:
            done = await jq.wait(job.id, interval=0.05, timeout=15)
            assert done.status is Status.COMPLETED, done
        assert (await jq.get(a.id)).result == "a attempt 2"  # the worker claimed A again
        assert (await jq.get(b.id)).status is Status.FAILED
    finally:
        finish_a.set()
        fail_b.set()
        finish_rest.set()
        let_through.set()
        await stop(worker, task)
    assert most <= 2, f"{most} handlers ran at once with concurrency 2"


WORKER = "the-worker"


def _taken(jq: AsyncJobQueue, slots: Slots, job: Job) -> Slot:
    """A claim of ``job`` taking a place in ``slots``, its handler ended."""
    slot = Slot(job, WorkerContext(jq, job, WORKER, asyncio.get_running_loop()), time.monotonic())
    slots.take(slot)
    slots.handler_ended(slot)
    return slot


async def test_a_batch_answer_with_more_jobs_than_free_places_hands_the_extras_back(
    jq: AsyncJobQueue, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Should a batch's claim bring more jobs than there are places free when it answers
    (here a place is taken behind the batch's back while its statement runs), the extras
    are not run: they go back to ``pending`` at once, their attempt given back."""
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    await jq.enqueue("work", {"n": 1})
    await jq.enqueue("work", {"n": 2})
    [first, other] = await jq.claim(WORKER, queues=["default"], limit=2, lease=30)
    extra = await jq.enqueue("work", {"n": 3})
    slots = Slots(1)
    mine = _taken(jq, slots, first)
    lifecycle = Lifecycle(WORKER, 0.0)
    lifecycle.begin(until_idle=False)
    lifecycle.started()
    lifecycle.slots_taken()  # the claim loop waits: the batch claims with its completion
    started: list[Job] = []
    completer = Completer(
        jq,
        slots,
        lifecycle,
        worker_id=WORKER,
        queues=("default",),
        kinds=None,
        lease=30,
        start_job=started.append,
        count_claim=lambda: None,
        slot_freed=lambda: None,
    )
    write = jq.complete_and_claim
    limits: list[int] = []

    async def crowded(*args: Any, **kwargs: Any) -> Any:
        limits.append(kwargs["limit"])
        _taken(jq, slots, other)  # the batch's own place is gone before the answer
        return await write(*args, **kwargs)

    monkeypatch.setattr(jq, "complete_and_claim", crowded)
    completer.start()
    try:
        await completer.record(mine, Completion(first, "done"))
        await eventually(completer.idle)
    finally:
        await completer.cancel()
        lifecycle.end()
    assert limits == [1]  # its own place
    assert [job.id for job in started] == []
    back = await jq.get(extra.id)
    assert (back.status, back.attempts, back.locked_by) == (Status.PENDING, 0, None)
    assert (await jq.get(first.id)).status is Status.COMPLETED
    assert (
        f"Job {extra.id}: claimed with no free place, or as the worker stopped; handed back unrun"
        in messages(caplog)
    )
