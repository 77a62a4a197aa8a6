"""The behavioural suite of the queue API: SQLite and PostgreSQL, sync and async (fixture q)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from jobqueue import (
    AsyncJobQueue,
    Completion,
    InvalidJobId,
    InvalidTransition,
    JobNotFound,
    JobQueue,
    LeaseLost,
    NewJob,
    PayloadError,
    Status,
    migrate,
)
from jobqueue.drivers.engines import make_async_engine
from tests.conftest import Either


async def test_enqueue_returns_the_job_at_once(q: Either) -> None:
    job = await q.enqueue("image", {"prompt": "a lego cat"}, owner_id="u1", priority=3)
    assert isinstance(job.id, uuid.UUID) and job.id.version == 7
    assert job.status is Status.PENDING
    assert (job.kind, job.queue, job.priority, job.owner_id) == ("image", "default", 3, "u1")
    assert job.payload == {"prompt": "a lego cat"}
    assert job.attempts == 0 and job.max_attempts == 3
    assert job.completed_at is None and job.created_at.tzinfo is not None
    again = await q.get(str(job.id))
    assert again == job


async def test_ids_are_time_ordered(q: Either) -> None:
    jobs = [await q.enqueue("image", {"i": i}) for i in range(5)]
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)


async def test_idempotency_key_makes_one_job_per_queue(q: Either) -> None:
    first = await q.enqueue("image", {"prompt": "x"}, idempotency_key="click-1")
    second = await q.enqueue("image", {"prompt": "changed"}, idempotency_key="click-1")
    other_queue = await q.enqueue("image", {}, idempotency_key="click-1", queue="slow")
    assert second.id == first.id and second.payload == {"prompt": "x"}
    assert other_queue.id != first.id
    assert len(await q.list(queue="default")) == 1


async def test_enqueue_many_keeps_order_and_reuses_keys(q: Either) -> None:
    existing = await q.enqueue("image", {"n": -1}, idempotency_key="k0")
    batch = [NewJob(payload={"n": i}, idempotency_key=f"k{i}") for i in range(50)]
    jobs = await q.enqueue_many(batch)
    assert [j.payload["n"] for j in jobs[1:]] == list(range(1, 50))
    assert jobs[0].id == existing.id
    assert len({j.id for j in jobs}) == 50
    assert await q.enqueue_many([]) == []


async def test_claim_takes_priority_then_age_and_sets_the_lease(q: Either) -> None:
    low = await q.enqueue("image", {"n": 1})
    high = await q.enqueue("image", {"n": 2}, priority=10)
    later = await q.enqueue("image", {"n": 3})
    claimed = await q.claim("worker-a", limit=2, lease=60)
    assert [j.id for j in claimed] == [high.id, low.id]
    for job in claimed:
        assert job.status is Status.PROCESSING
        assert job.locked_by == "worker-a" and job.attempts == 1
        assert job.started_at is not None and job.lease_expires_at is not None
        assert job.lease_expires_at - job.started_at >= timedelta(seconds=59)
    assert [j.id for j in await q.claim("worker-b", limit=5)] == [later.id]
    assert await q.claim("worker-b") == []


async def test_claim_filters_queue_and_kind(q: Either) -> None:
    await q.enqueue("image", {}, queue="slow")
    video = await q.enqueue("video", {})
    await q.enqueue("image", {})
    assert [j.id for j in await q.claim("w", kinds=["video"], limit=5)] == [video.id]
    assert len(await q.claim("w", queues=["slow"], limit=5)) == 1
    assert len(await q.claim("w", queues=None, limit=5)) == 1


async def test_delayed_and_scheduled_jobs_wait_for_their_time(q: Either) -> None:
    await q.enqueue("image", {}, delay=timedelta(hours=1))
    await q.enqueue("image", {}, run_at=datetime.now(UTC) + timedelta(hours=1))
    assert await q.claim("w", limit=5) == []
    due = await q.enqueue("image", {}, run_at=datetime.now(UTC) - timedelta(seconds=1))
    assert [j.id for j in await q.claim("w", limit=5)] == [due.id]


async def test_complete_records_result_and_final_time(q: Either) -> None:
    await q.enqueue("image", {"prompt": "p"})
    (job,) = await q.claim("w")
    done = await q.complete(job, {"images": ["https://x/1.png"]}, "https://x/1.png")
    assert done.status is Status.COMPLETED and done.progress == 100
    assert done.result == {"images": ["https://x/1.png"]}
    assert done.result_url == "https://x/1.png"
    assert done.completed_at is not None and done.duration is not None
    assert done.lease_expires_at is None


async def test_progress_and_remote_task_id_are_saved(q: Either) -> None:
    await q.enqueue("image", {})
    (job,) = await q.claim("w")
    await q.set_progress(job, 40, "rendering")
    await q.save_remote_task_id(job, "task-123")
    seen = await q.get(job.id)
    assert (seen.progress, seen.progress_message, seen.remote_task_id) == (
        40,
        "rendering",
        "task-123",
    )
    with pytest.raises(PayloadError):
        await q.set_progress(job, 101)


async def test_each_attempt_starts_with_fresh_progress(q: Either) -> None:
    """A released or retried job does not show the last attempt's progress."""
    await q.enqueue("image", {})
    (job,) = await q.claim("w")
    await q.set_progress(job, 60, "half")
    await q.release(job)
    (again,) = await q.claim("w")
    assert (again.progress, again.progress_message) == (0, None)

    await q.set_progress(again, 70, "almost")
    await q.fail(again, "boom", retry=True, retry_in=0)
    (third,) = await q.claim("w")
    assert (third.progress, third.progress_message) == (0, None)


async def test_fail_schedules_a_retry_with_backoff(q: Either) -> None:
    await q.enqueue("image", {}, max_attempts=2)
    (job,) = await q.claim("w")
    retried = await q.fail(job, RuntimeError("provider down"), retry_in=3600)
    assert retried.status is Status.PENDING and retried.completed_at is None
    assert retried.error == "RuntimeError: provider down"
    assert retried.locked_by is None and retried.lease_expires_at is None
    assert retried.run_at - job.started_at >= timedelta(minutes=59)
    assert await q.claim("w") == []  # backing off
    assert retried.errors == [
        {"attempt": 1, "at": retried.errors[0]["at"], "error": "RuntimeError: provider down"}
    ]


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    from jobqueue.operations import backoff_delay

    for attempt, ceiling in [(1, 5.0), (2, 10.0), (3, 20.0), (10, 600.0)]:
        delays = [backoff_delay(attempt, 5.0, 600.0) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.5  # spread over the range, not a constant


async def test_fail_out_of_attempts_is_final_with_history(q: Either) -> None:
    await q.enqueue("image", {}, max_attempts=2)
    (job,) = await q.claim("w")
    await q.fail(job, "first", retry_in=0)
    (job2,) = await q.claim("w")
    assert job2.attempts == 2
    failed = await q.fail(job2, "second")
    assert failed.status is Status.FAILED and failed.completed_at is not None
    assert [e["error"] for e in failed.errors] == ["first", "second"]
    assert [e["attempt"] for e in failed.errors] == [1, 2]
    assert failed.error == "second"


async def test_fail_without_retry_is_final(q: Either) -> None:
    await q.enqueue("image", {}, max_attempts=5)
    (job,) = await q.claim("w")
    failed = await q.fail(job, "bad prompt", retry=False)
    assert failed.status is Status.FAILED


async def test_fencing_refuses_a_worker_whose_lease_was_taken(q: Either) -> None:
    await q.enqueue("image", {})
    (stale,) = await q.claim("slow-worker", lease=0.05)
    await asyncio.sleep(0.2)
    (fresh,) = await q.claim("fast-worker")
    assert fresh.id == stale.id and fresh.attempts == 2
    assert "lease expired while held by slow-worker" in fresh.errors[-1]["error"]
    for write in (
        q.complete(stale, {"stale": True}),
        q.fail(stale, "stale"),
        q.set_progress(stale, 50),
        q.heartbeat(stale),
        q.save_remote_task_id(stale, "t"),
        q.release(stale),
    ):
        with pytest.raises(LeaseLost):
            await write
    done = await q.complete(fresh, {"fresh": True})
    assert done.result == {"fresh": True}
    assert (await q.get(fresh.id)).result == {"fresh": True}


async def test_heartbeat_extends_the_lease(q: Either) -> None:
    await q.enqueue("image", {})
    (job,) = await q.claim("w", lease=2)
    claimed = (await q.get(job.id)).lease_expires_at
    assert claimed is not None
    # Extended by the database clock, from the heartbeat's time: no timing on our side.
    await q.heartbeat(job, lease=60)
    extended = (await q.get(job.id)).lease_expires_at
    assert extended is not None and extended >= claimed + timedelta(seconds=57)
    assert await q.claim("other") == []
    held = await q.heartbeat_many("w", [job], lease=30)
    assert held == {job.id}
    assert await q.heartbeat_many("someone-else", [job]) == set()


async def test_a_heartbeat_for_an_old_attempt_does_not_extend_the_new_one(q: Either) -> None:
    """`heartbeat_many` is fenced by the attempt, even when the same worker claimed the
    job again."""
    await q.enqueue("image", {})
    (first,) = await q.claim("w")
    await q.release(first)
    (second,) = await q.claim("w")
    # The released attempt was given back: same number, a later claim.
    assert second.attempts == first.attempts
    assert second.started_at is not None and first.started_at is not None
    assert second.started_at > first.started_at
    assert await q.heartbeat_many("w", [first]) == set()
    assert await q.heartbeat_many("w", [first, second]) == {second.id}


async def test_a_zero_lease_is_refused_not_replaced_by_the_default(q: Either) -> None:
    """``lease=0`` is a mistake to report, not "no lease given" (which means 30 s)."""
    await q.enqueue("image", {})
    (job,) = await q.claim("w")
    with pytest.raises(PayloadError):
        await q.heartbeat(job, lease=0)
    with pytest.raises(PayloadError):
        await q.heartbeat_many("w", [job], lease=0)
    with pytest.raises(PayloadError):
        await q.heartbeat_many("w", [job], lease=-1)


async def test_complete_many_writes_held_jobs_and_reports_fenced_ones(q: Either) -> None:
    await q.enqueue_many([NewJob(payload={"i": i}) for i in range(4)])
    jobs = await q.claim("w", limit=4)
    stale = jobs[0]
    await q.cancel(stale.id)
    written = await q.complete_many(
        [Completion(j, {"i": j.payload["i"]}, f"u{j.payload['i']}") for j in jobs]
    )
    assert written == {j.id for j in jobs[1:]}
    for j in jobs[1:]:
        got = await q.get(j.id)
        assert got.status is Status.COMPLETED
        assert got.result == {"i": j.payload["i"]} and got.result_url == f"u{j.payload['i']}"
    assert (await q.get(stale.id)).status is Status.CANCELLED


async def test_complete_and_claim_writes_the_batch_and_takes_the_next_jobs(q: Either) -> None:
    await q.enqueue_many([NewJob(payload={"i": i}) for i in range(6)])
    held = await q.claim("w", limit=3)
    stale = held[0]
    await q.cancel(stale.id)
    written, claimed = await q.complete_and_claim(
        [Completion(j, {"i": j.payload["i"]}) for j in held], "w", limit=2, lease=30
    )
    assert written == {j.id for j in held[1:]}  # the cancelled one was fenced off
    assert [j.payload["i"] for j in claimed] == [3, 4]  # oldest first
    assert all(j.status is Status.PROCESSING and j.attempts == 1 for j in claimed)
    assert all(j.locked_by == "w" for j in claimed)
    for j in held[1:]:
        got = await q.get(j.id)
        assert got.status is Status.COMPLETED and got.result == {"i": j.payload["i"]}
    assert (await q.get(stale.id)).status is Status.CANCELLED
    # Nothing to complete, nothing left but one job: still one answer of each kind.
    written, (last,) = await q.complete_and_claim([], "w", limit=5)
    assert written == set() and last.payload["i"] == 5
    written, claimed = await q.complete_and_claim([Completion(last)], "w", limit=5)
    assert written == {last.id} and claimed == []


async def test_complete_and_claim_never_claims_a_job_it_completes(q: Either) -> None:
    (job,) = await q.enqueue_many([NewJob(payload={})])
    (held,) = await q.claim("w", lease=0.05)
    await asyncio.sleep(0.15)  # the lease expired: the job is claimable again
    written, claimed = await q.complete_and_claim([Completion(held, "late")], "w", limit=5)
    assert written == {job.id} and claimed == []
    done = await q.get(job.id)
    assert done.status is Status.COMPLETED and done.result == "late" and done.attempts == 1


async def test_complete_and_claim_checks_its_input_before_writing(q: Either) -> None:
    await q.enqueue_many([NewJob(payload={}) for _ in range(2)])
    (held,) = await q.claim("w")
    with pytest.raises(PayloadError, match="limit"):
        await q.complete_and_claim([Completion(held)], "w", limit=0)
    with pytest.raises(PayloadError):
        await q.complete_and_claim([Completion(held, {1: "a", "1": "b"})], "w", limit=1)
    assert (await q.get(held.id)).status is Status.PROCESSING
    assert len(await q.list(status="pending")) == 1


async def test_cancel_pending_and_running_but_not_finished(q: Either) -> None:
    pending = await q.enqueue("image", {})
    cancelled = await q.cancel(pending.id)
    assert cancelled.status is Status.CANCELLED and cancelled.completed_at is not None
    with pytest.raises(InvalidTransition):
        await q.cancel(pending.id)
    await q.enqueue("image", {})
    (running,) = await q.claim("w")
    assert (await q.cancel(running)).status is Status.CANCELLED
    with pytest.raises(LeaseLost):
        await q.complete(running)


async def test_retry_requeues_failed_and_cancelled_jobs(q: Either) -> None:
    await q.enqueue("image", {}, max_attempts=1)
    (job,) = await q.claim("w")
    failed = await q.fail(job, "boom")
    assert failed.status is Status.FAILED
    requeued = await q.retry(job.id)
    assert requeued.status is Status.PENDING and requeued.completed_at is None
    assert requeued.max_attempts == 2 and requeued.errors == failed.errors
    (again,) = await q.claim("w")
    assert again.attempts == 2
    done = await q.complete(again)
    with pytest.raises(InvalidTransition):
        await q.retry(done.id)


async def test_release_gives_the_job_back_without_spending_an_attempt(q: Either) -> None:
    await q.enqueue("image", {}, max_attempts=1)
    (job,) = await q.claim("w")
    await q.set_progress(job, 60, "halfway")
    released = await q.release(job, "worker shutting down")
    assert released.status is Status.PENDING and released.locked_by is None
    # The attempt is given back, the job's own limit stays, the progress starts over.
    assert (released.attempts, released.max_attempts) == (0, 1)
    assert (released.progress, released.progress_message) == (0, None)
    assert released.errors[-1]["attempt"] == 1
    assert released.errors[-1]["error"] == "worker shutting down"
    (again,) = await q.claim("w")
    assert (again.attempts, again.max_attempts) == (1, 1)


async def test_a_released_claim_can_write_nothing_once_the_job_is_claimed_again(
    q: Either,
) -> None:
    """The attempt number goes back down on release, so the next claim (here by the very
    same worker id) has the number of the released one again: the fence still tells them
    apart, for every write a worker makes."""
    await q.enqueue("image", {})
    (stale,) = await q.claim("w")
    await q.release(stale, "stopping")
    (fresh,) = await q.claim("w")  # the same worker id, at once (same clock tick, likely)
    assert (fresh.id, fresh.attempts, fresh.locked_by) == (stale.id, stale.attempts, "w")
    assert fresh.started_at is not None and stale.started_at is not None
    assert fresh.started_at > stale.started_at
    await q.set_progress(fresh, 30, "fresh")
    await q.save_remote_task_id(fresh, "fresh-task")
    before = await q.get(fresh.id)

    for write in (
        q.set_progress(stale, 90, "stale"),
        q.save_remote_task_id(stale, "stale-task"),
        q.heartbeat(stale),
        q.complete(stale, {"stale": True}, "https://stale.example/1.png"),
        q.fail(stale, "stale failure"),
        q.fail(stale, "stale failure", retry=False),
        q.release(stale, "stale release"),
    ):
        with pytest.raises(LeaseLost, match="a later claim: this one was released"):
            await write
    assert await q.heartbeat_many("w", [stale]) == set()
    assert await q.complete_many([Completion(stale, {"stale": True})]) == set()
    written, claimed = await q.complete_and_claim([Completion(stale, {"stale": 1})], "w", limit=1)
    assert (written, claimed) == (set(), [])
    assert await q.get(fresh.id) == before  # not one column changed

    assert await q.heartbeat_many("w", [stale, fresh]) == {fresh.id}
    done = await q.complete(fresh, {"fresh": True})
    assert (done.status, done.result, done.progress) == (Status.COMPLETED, {"fresh": True}, 100)


async def test_reap_requeues_or_fails_expired_jobs(q: Either) -> None:
    await q.enqueue("image", {}, max_attempts=1)
    await q.enqueue("image", {}, max_attempts=3)
    jobs = await q.claim("w", limit=2, lease=0.05)
    await asyncio.sleep(0.2)
    reaped = dict(await q.reap())
    by_attempts = {j.max_attempts: j.id for j in jobs}
    assert reaped == {by_attempts[1]: Status.FAILED, by_attempts[3]: Status.PENDING}
    spent = await q.get(by_attempts[1])
    assert spent.completed_at is not None and "lease expired" in (spent.error or "")
    assert await q.reap() == []


async def _held_then_backlog(q: Either, lease: float = 0.05) -> tuple[Any, list[Any]]:
    """A job claimed (with a short lease), then a backlog enqueued after it."""
    first = await q.enqueue("image", {"n": "first"})
    [held] = await q.claim("vanishing-worker", lease=lease)
    assert held.id == first.id
    backlog = [await q.enqueue("image", {"n": i}) for i in range(3)]
    return first, backlog


async def test_a_job_whose_lease_expired_keeps_its_place_in_line(q: Either) -> None:
    """A claim takes an expired job in its own order (priority, then when it was due),
    not after the backlog enqueued while it was held; priority still comes first."""
    first, backlog = await _held_then_backlog(q)
    urgent = await q.enqueue("image", {"n": "urgent"}, priority=5)
    await asyncio.sleep(0.2)  # the lease expired
    assert [j.id for j in await q.claim("w", limit=1)] == [urgent.id]
    claimed = await q.claim("w", limit=2)
    assert [j.id for j in claimed] == [first.id, backlog[0].id]
    assert claimed[0].attempts == 2 and claimed[0].run_at == first.run_at


async def test_a_reaped_job_keeps_its_place_in_line(q: Either) -> None:
    first, backlog = await _held_then_backlog(q)
    await asyncio.sleep(0.2)
    assert await q.reap() == [(first.id, Status.PENDING)]
    back = await q.get(first.id)
    assert back.run_at == first.run_at
    assert [j.id for j in await q.claim("w", limit=2)] == [first.id, backlog[0].id]


async def test_a_released_job_keeps_its_place_in_line(q: Either) -> None:
    first, backlog = await _held_then_backlog(q, lease=60)
    back = await q.release(await q.get(first.id))
    assert back.run_at == first.run_at
    assert [j.id for j in await q.claim("w", limit=2)] == [first.id, backlog[0].id]


async def test_unknown_and_malformed_ids(q: Either) -> None:
    with pytest.raises(JobNotFound):
        await q.get(uuid.uuid4())
    with pytest.raises(InvalidJobId):
        await q.get("not-a-uuid")
    with pytest.raises(JobNotFound):
        await q.cancel(str(uuid.uuid4()))
    with pytest.raises(JobNotFound):
        await q.retry(uuid.uuid4())


async def test_owner_scoping(q: Either) -> None:
    mine = await q.enqueue("image", {}, owner_id="alice")
    await q.enqueue("image", {}, owner_id="bob")
    assert [j.id for j in await q.list(owner_id="alice")] == [mine.id]
    with pytest.raises(JobNotFound):
        await q.get(mine.id, owner_id="bob")
    with pytest.raises(JobNotFound):
        await q.cancel(mine.id, owner_id="bob")
    assert (await q.get(mine.id, owner_id="alice")).id == mine.id


async def test_list_filters_and_orders_newest_first(q: Either) -> None:
    jobs = [await q.enqueue("image", {"i": i}) for i in range(3)]
    (claimed,) = await q.claim("w")
    listed = await q.list()
    assert [j.id for j in listed] == [j.id for j in reversed(jobs)]
    assert [j.id for j in await q.list(status="processing")] == [claimed.id]
    assert len(await q.list(status=["pending", Status.PROCESSING])) == 3
    assert len(await q.list(since=timedelta(minutes=5), limit=2)) == 2
    assert await q.list(since=datetime.now(UTC) + timedelta(days=1)) == []
    with pytest.raises(PayloadError):
        await q.list(status="stuck")


async def test_stats_counts_and_average_duration_per_status(q: Either) -> None:
    await q.enqueue_many([NewJob(payload={}) for _ in range(3)])
    first, second = await q.claim("w", limit=2)
    await q.complete(first)
    await q.fail(second, "x", retry=False)
    stats = {s.status: s for s in await q.stats()}
    assert stats[Status.COMPLETED].count == 1
    assert stats[Status.FAILED].count == 1
    assert stats[Status.PENDING].count == 1 and stats[Status.PENDING].avg_duration_sec is None
    avg = stats[Status.COMPLETED].avg_duration_sec
    assert avg is not None and 0 <= avg < 60


async def test_prune_removes_only_old_finished_jobs(q: Either) -> None:
    await q.enqueue_many([NewJob(payload={}) for _ in range(3)])
    a, b = await q.claim("w", limit=2)
    await q.complete(a)
    await q.complete(b)
    assert await q.prune(older_than=timedelta(days=1)) == 0
    await asyncio.sleep(0.05)
    assert await q.prune(older_than=0.01) == 2
    remaining = await q.list()
    assert [j.status for j in remaining] == [Status.PENDING]
    with pytest.raises(PayloadError):
        await q.prune(older_than=0, statuses=["pending"])


async def test_wait_polls_until_final_and_reports_changes(q: Either) -> None:
    job = await q.enqueue("image", {})
    seen: list[tuple[Status, int]] = []

    async def work() -> None:
        await asyncio.sleep(0.1)
        (held,) = await q.claim("w")
        await q.set_progress(held, 50, "half")
        await asyncio.sleep(0.1)
        await q.complete(held, {"ok": True})

    if q.is_async:
        worker = asyncio.create_task(work())
        final = await q.wait(
            job.id, interval=0.02, on_change=lambda j: seen.append((j.status, j.progress))
        )
        await worker
    else:
        worker = asyncio.create_task(work())
        final = await asyncio.to_thread(
            q.target.wait,
            job.id,
            interval=0.02,
            on_change=lambda j: seen.append((j.status, j.progress)),
        )
        await worker
    assert final.status is Status.COMPLETED
    assert seen[0] == (Status.PENDING, 0) and seen[-1] == (Status.COMPLETED, 100)
    assert (Status.PROCESSING, 50) in seen


async def test_wait_times_out_and_the_job_lives_on(q: Either) -> None:
    from jobqueue import WaitTimeout

    job = await q.enqueue("image", {})
    with pytest.raises(WaitTimeout):
        await q.wait(job.id, interval=0.02, timeout=0.1)
    assert (await q.get(job.id)).status is Status.PENDING


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"payload": {"x": float("nan")}}, "JSON"),
        ({"payload": {"x": object()}}, "JSON"),
        ({"payload": {"x": "a" * 2_000_000}}, "limit"),
        ({"priority": 10**9}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"delay": -1}, "delay"),
        ({"delay": float("inf")}, "delay"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"kind": ""}, "kind"),
        ({"queue": "q" * 500}, "queue"),
        ({"idempotency_key": "k" * 300}, "idempotency_key"),
        ({"run_at": datetime(2030, 1, 1)}, "timezone"),
        ({"run_at": datetime.now(UTC), "delay": 1}, "not both"),
        ({"owner_id": 42}, "owner_id"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_written(
    q: Either, kwargs: dict[str, Any], match: str
) -> None:
    args: dict[str, Any] = {"kind": "image", "payload": {}}
    args.update(kwargs)
    with pytest.raises(PayloadError, match=match):
        await q.enqueue(args.pop("kind"), args.pop("payload"), **args)
    assert await q.list() == []


async def test_a_result_that_is_not_json_is_refused_and_the_job_still_held(q: Either) -> None:
    await q.enqueue("image", {})
    (job,) = await q.claim("w")
    with pytest.raises(PayloadError):
        await q.complete(job, {"bad": {1, 2}})
    assert (await q.get(job.id)).status is Status.PROCESSING
    assert (await q.complete(job, {"good": 1})).status is Status.COMPLETED


async def test_a_naive_since_or_an_unknown_status_is_a_payload_error(q: Either) -> None:
    """A naive ``since`` in `list` and an unknown status in `list` or `prune` are the
    caller's mistake (`PayloadError`), not a database or a bare ``ValueError``."""
    with pytest.raises(PayloadError, match="timezone-aware"):
        await q.list(since=datetime(2026, 1, 1))
    with pytest.raises(PayloadError, match="unknown status"):
        await q.prune(statuses=["bogus"])
    with pytest.raises(PayloadError, match="unknown status"):
        await q.list(status=["pending", "bogus"])
    job = await q.enqueue("image", {})
    assert [j.id for j in await q.list(since=datetime.now(UTC) - timedelta(hours=1))] == [job.id]


async def test_json_values_round_trip_through_every_write(q: Either) -> None:
    """Values come back equal from enqueue, enqueue_many, complete and complete_many, on
    both databases (each is encoded once, and that text is what is stored)."""
    value = {"prompt": "ein Bär 🐻", "zero": 0.0, "big": 2**70, "nested": {"a": [None, True]}}
    job = await q.enqueue("image", value)
    (other,) = await q.enqueue_many([NewJob(payload=[value, "x"])])
    assert (await q.get(job.id)).payload == value
    assert (await q.get(other.id)).payload == [value, "x"]
    first, second = await q.claim("w", limit=2)
    assert (await q.complete(first, value)).result == value
    assert await q.complete_many([Completion(second, [value])]) == {second.id}
    assert (await q.get(second.id)).result == [value]


ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def test_error_times_are_iso_8601_utc_on_every_backend(
    migrated: tuple[str, str],
    raw_sql: Callable[..., list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As stored, not only as read: other clients (psql, Supabase) read the column too. On
    PostgreSQL the session's time zone is not UTC, which used to show in the text."""
    url, table = migrated
    # libpq sends it as the session's TimeZone (a parameter poolers pass on, too).
    monkeypatch.setenv("PGTZ", "Asia/Tokyo")
    with JobQueue(url, table=table) as q:
        q.enqueue("image", {})
        q.fail(q.claim("w")[0], "boom", retry_in=0)  # a retry
        q.release(q.claim("w")[0], "stopping")  # a release
        q.claim("w", lease=0.001)
        time.sleep(0.05)
        q.claim("w")  # a lost lease, recorded by the next claim
        q.fail(q.list(status="processing")[0], "boom again")
    (stored,) = raw_sql(f"SELECT errors FROM {table}")
    errors = json.loads(stored[0]) if isinstance(stored[0], str) else stored[0]
    # Attempt 2 is released (given back), claimed again and its lease lost.
    assert [e["attempt"] for e in errors] == [1, 2, 2, 3], errors
    for entry in errors:
        assert ISO_UTC.fullmatch(entry["at"]), entry
        at = datetime.fromisoformat(entry["at"])
        assert abs((datetime.now(UTC) - at).total_seconds()) < 300, entry


async def test_error_times_written_before_read_in_the_one_format(
    q: Either, raw_sql: Callable[..., list[Any]], migrated: tuple[str, str]
) -> None:
    job = await q.enqueue("image", {})
    old = [
        {"attempt": 1, "at": "2026-11-29 07:05:48.123000", "error": "SQLite's clock text"},
        {"attempt": 2, "at": "2026-11-29T08:05:48.123456+01:00", "error": "a session zone"},
        {"attempt": 3, "at": "not a time", "error": "left as it is"},
    ]
    value = "CAST(:e AS jsonb)" if migrated[0].startswith("postgresql") else ":e"
    raw_sql(f"UPDATE {migrated[1]} SET errors = {value}", e=json.dumps(old))
    read = await q.get(job.id)
    assert [e["at"] for e in read.errors] == [
        "2026-11-29T07:05:48.123000+00:00",
        "2026-11-29T07:05:48.123456+00:00",
        "not a time",
    ]
    assert (await q.list())[0].errors == read.errors


async def test_a_stream_of_calls_keeps_one_connection(postgres_url: str, table_name: str) -> None:
    """`AsyncJobQueue._run_spare`: operations that follow each other in a task run on one
    connection taken from the pool once; it goes back to the pool when the event loop turns
    with none running on it; concurrent operations take connections of their own; an
    error gives it back; `close` gives it back."""
    migrate(postgres_url, table=table_name)
    async with AsyncJobQueue(postgres_url, table=table_name) as q:
        pool: Any = q.engine.pool
        checkouts: list[object] = []
        event.listen(q.engine.sync_engine, "checkout", lambda *a: checkouts.append(a))
        jobs = [await q.enqueue("image", {"n": i}) for i in range(20)]
        assert (await q.get(jobs[0].id)).payload == {"n": 0}
        assert len(checkouts) == 1 and pool.checkedout() == 1
        for _ in range(3):  # the loop turns: the callback, then the close
            await asyncio.sleep(0)
        assert pool.checkedout() == 0
        await asyncio.gather(*(q.get(job.id) for job in jobs[:3]))
        assert len(checkouts) == 4  # one kept, two more for the concurrent ones
        await q.enqueue("image", {"n": 99})
        assert pool.checkedout() == 1
        with pytest.raises(JobNotFound):
            await q.get(uuid.uuid4())
        assert pool.checkedout() == 0
        await q.enqueue("image", {"n": 100})
        assert pool.checkedout() == 1
    assert pool.checkedout() == 0  # `close` gave it back


def test_a_stream_of_sync_calls_keeps_one_connection(postgres_url: str, table_name: str) -> None:
    """`jobqueue.drivers.spare`: the sync queue's operations that follow each other run on
    one connection, given back to the pool once none has used it for a moment (and by
    `close`); an error gives it back at once."""
    from jobqueue.drivers.spare import IDLE

    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        pool: Any = q.engine.pool
        checkouts: list[object] = []
        event.listen(q.engine, "checkout", lambda *a: checkouts.append(a))
        jobs = [q.enqueue("image", {"n": i}) for i in range(20)]
        assert q.get(jobs[0].id).payload == {"n": 0}
        assert len(checkouts) == 1 and pool.checkedout() == 1
        until = time.monotonic() + IDLE + 10.0
        while pool.checkedout() and time.monotonic() < until:
            time.sleep(IDLE / 5)
        assert pool.checkedout() == 0
        q.enqueue("image", {"n": 99})
        assert pool.checkedout() == 1
        with pytest.raises(JobNotFound):
            q.get(uuid.uuid4())
        assert pool.checkedout() == 0
        q.enqueue("image", {"n": 100})
        assert pool.checkedout() == 1
    assert pool.checkedout() == 0  # `close` gave it back


async def test_a_held_connection_runs_a_tasks_operations(
    postgres_url: str, table_name: str
) -> None:
    """`AsyncJobQueue._holding` (a worker's completion writer): the operations a task runs
    inside `_on_held` run on the one connection it keeps, not those of other tasks (one
    started inside the block included); an error gives the connection back to the pool,
    and so does `Held.let_go`; a queue whose pool cannot spare one gets none."""
    migrate(postgres_url, table=table_name)
    async with AsyncJobQueue(postgres_url, table=table_name) as q:
        pool: Any = q.engine.pool
        held = q._holding(3)
        assert held is not None and not held.holds
        job = await q.enqueue("image", {"n": 1})
        with q._on_held(held):
            (claimed,) = await q.claim("w", limit=1)
            assert held.holds and pool.checkedout() == 1
            conn = held.conn
            # Another task (even one started here) takes a connection of its own.
            other = asyncio.create_task(q.get(job.id))
            for _ in range(10):  # its checkout runs in a task of its own: a few loop turns
                await asyncio.sleep(0)
                if pool.checkedout() == 2:
                    break
            assert pool.checkedout() == 2
            await other
            await q.complete(claimed, {"ok": True})
            assert held.conn is conn and pool.checkedout() == 1  # the same connection again
        assert (await q.get(job.id)).status is Status.COMPLETED
        await q._spare.let_go()  # the queue's spare (`test_a_stream_of_calls_keeps_one_connection`)
        assert held.holds and pool.checkedout() == 1
        with q._on_held(held), pytest.raises(LeaseLost):
            await q.complete(claimed, {"again": True})  # an error: given back
        assert not held.holds and pool.checkedout() == 0
        with q._on_held(held):
            await q.get(job.id)
        assert held.holds
        await held.let_go()
        assert not held.holds and pool.checkedout() == 0
        assert q._holding(100) is None  # 5 + 10 connections cannot spare 100
    engine = make_async_engine(postgres_url, pool_size=1, max_overflow=0)
    try:
        assert AsyncJobQueue(engine, table=table_name)._holding(1) is None
    finally:
        await engine.dispose()
