"""Outcomes a handler chooses: `RetryLater` holds its job back without spending an attempt
and pauses its limit key for every worker (real databases, small real handlers)."""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, JobQueue, RetryLater, Status
from jobqueue.models import MAX_DELAY
from jobqueue.worker import Worker, WorkerContext
from tests.worker.conftest import drain, messages

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def seconds(delta: timedelta | None) -> float:
    assert delta is not None
    return delta.total_seconds()


#: The hold-back: long enough that the claims below, by other workers, still fall within it
#: on a loaded machine (at 2 s one of them once came after its end).
PAUSE = 4


@pytest.mark.parametrize("style", ["async", "sync"])
async def test_a_handler_raising_retry_later_holds_its_job_back_and_pauses_its_key(
    jq: AsyncJobQueue, migrated: tuple[str, str], caplog: pytest.LogCaptureFixture, style: str
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    first = await jq.enqueue("paid", {"n": 1}, max_attempts=2)
    second = await jq.enqueue("paid", {"n": 2}, max_attempts=2)
    calls: list[tuple[int, int]] = []

    def run(job: Job) -> str:
        calls.append((job.payload["n"], job.attempts))
        if len(calls) == 1:
            raise RetryLater(after=PAUSE, reason="provider busy")
        return f"done {job.payload['n']}"

    async def paid_async(job: Job, ctx: WorkerContext) -> str:
        return run(job)

    def paid_sync(job: Job, ctx: WorkerContext) -> str:
        return run(job)

    handler = paid_async if style == "async" else paid_sync
    worker = Worker(jq, {"paid": handler}, concurrency=1, lease=10, listen=False)
    assert await worker.run_until_idle() == 1  # the hold-back; the key's pause stops the rest

    held = await jq.get(first.id)
    assert (held.status, held.attempts, held.locked_by) == (Status.PENDING, 0, None)
    assert seconds(held.run_at - held.updated_at) == pytest.approx(PAUSE, abs=1.0)
    assert [e["error"] for e in held.errors] == ["RetryLater: provider busy (retry in 4 s)"]
    (limit,) = [x for x in await jq.list_limits() if (x.scope, x.name) == ("key", "paid")]
    assert limit.paused and limit.pause_reason == "RetryLater: provider busy (retry in 4 s)"
    assert limit.paused_at is not None and limit.paused_until is not None
    # The key is paused until the job is due again: one end, by the hold-back's clock.
    assert limit.paused_until == held.run_at
    assert 0 < seconds(limit.paused_until - limit.paused_at) <= PAUSE
    # Every other claim, by another worker, sync or async, finds nothing of the key.
    url, table = migrated
    with JobQueue(url, table=table) as other:
        assert other.claim("second-worker", kinds=["paid"], limit=5) == []
        assert other.enter_line() == 0
        assert [x.paused for x in other.list_limits() if x.name == "paid"] == [True]
    assert await jq.claim("third-worker", kinds=["paid"], limit=5) == []
    assert (await jq.get(second.id)).status is Status.PENDING
    assert "held back 4.0 s, attempt 1 given back; limit key 'paid' paused" in messages(caplog)

    await drain(worker, jq, [first.id, second.id])
    done = [await jq.get(first.id), await jq.get(second.id)]
    # Nothing ran before the pause was over (both times from the database's clock).
    assert all(j.started_at is not None and j.started_at >= limit.paused_until for j in done)
    assert [(j.status, j.attempts) for j in done] == [(Status.COMPLETED, 1)] * 2
    assert sorted(j.result for j in done) == ["done 1", "done 2"]
    # The held job's next run was its first attempt again: the attempt was given back.
    assert sorted(calls) == [(1, 1), (1, 1), (2, 1)]


async def test_retry_later_takes_a_timedelta_and_is_cut_to_the_longest_delay(
    jq: AsyncJobQueue,
) -> None:
    job = await jq.enqueue("later", {}, limit_key="provider-a")

    async def later(job: Job, ctx: WorkerContext) -> None:
        raise RetryLater(timedelta(days=5000))

    await Worker(jq, {"later": later}, listen=False).run_until_idle()
    held = await jq.get(job.id)
    longest = MAX_DELAY.total_seconds()
    assert (held.status, held.attempts) == (Status.PENDING, 0)
    assert seconds(held.run_at - held.updated_at) == pytest.approx(longest, abs=1)
    (limit,) = [x for x in await jq.list_limits() if x.name == "provider-a"]
    assert limit.scope == "key" and limit.paused and limit.paused_until == held.run_at
    assert seconds(limit.paused_until - limit.paused_at) == pytest.approx(longest, abs=1)
    assert limit.pause_reason == (
        f"RetryLater: the provider asked to retry later (retry in {5000 * 86400:g} s)"
    )


@pytest.mark.parametrize("after", [-1.0, math.nan, "soon"], ids=["negative", "nan", "text"])
async def test_a_retry_later_without_a_usable_wait_fails_the_attempt(
    jq: AsyncJobQueue, after: Any
) -> None:
    job = await jq.enqueue("odd", {}, max_attempts=2)

    async def odd(job: Job, ctx: WorkerContext) -> str:
        if job.attempts == 1:
            raise RetryLater(after, reason="a bug")
        return "second attempt"

    await drain(Worker(jq, {"odd": odd}, listen=False), jq, [job.id])
    done = await jq.get(job.id)
    # A normal failure: the attempt is spent and the job's retry policy runs it again.
    assert (done.status, done.attempts, done.result) == (Status.COMPLETED, 2, "second attempt")
    (error,) = [e["error"] for e in done.errors]
    assert error.startswith(
        f"RetryLater: after must be a number of seconds, zero or more, not {after!r}"
    )
    assert await jq.list_limits() == []


async def test_retry_later_of_a_job_no_longer_held_is_refused_and_writes_nothing(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("gone", {})

    async def gone(job: Job, ctx: WorkerContext) -> None:
        await jq.cancel(job.id)  # the job stops being this attempt's
        raise RetryLater(5, reason="too late")

    assert await Worker(jq, {"gone": gone}, lease=10, listen=False).run_until_idle() == 0
    cancelled = await jq.get(job.id)
    assert (cancelled.status, cancelled.attempts) == (Status.CANCELLED, 1)
    assert f"Job {job.id}: not held back: " in messages(caplog)
    # The refused hold-back paused nothing.
    assert await jq.list_limits() == []
