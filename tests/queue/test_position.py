"""`queue.position(job)`: how many jobs are ahead of a job in the line, in the order the
workers claim them, and when it is expected to start and finish — on SQLite and
PostgreSQL, sync and async (the `q` fixture), with real workers' rows and real runs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from jobqueue import Completion, JobNotFound, Position, Status
from jobqueue.models import WorkerPresence, about, ordinal
from jobqueue.operations.position import PositionCache, start_estimate, typical_run_time
from tests.conftest import Either

RUN = 10.0  # seconds each completed run is made to have taken


async def completed_runs(
    q: Either, raw_sql: Any, n: int, seconds: float, kind: str = "image"
) -> None:
    """``n`` completed jobs of ``kind`` whose run took ``seconds``."""
    for i in range(n):
        await q.enqueue(kind, {"done": i}, queue="history")
    jobs = await q.claim("w-history", limit=n, queues=["history"])
    await q.complete_many([Completion(j) for j in jobs])
    table = q.table.name
    if q.is_postgres:
        later = f"started_at + make_interval(secs => {seconds})"
    else:
        later = f"strftime('%Y-%m-%d %H:%M:%f000', started_at, '+{seconds} seconds')"
    raw_sql(f"UPDATE {table} SET completed_at = {later} WHERE queue = 'history'")


async def live(q: Either, worker_id: str, queues: tuple[str, ...], concurrency: int) -> None:
    await q.worker_beat(WorkerPresence(worker_id, queues, None, concurrency), ttl=60)


async def test_jobs_ahead_follow_the_claim_order(q: Either) -> None:
    """Fair share: ann's three jobs and bob's one take turns (ann, bob, ann, ann); a job of
    a higher priority goes first. Claiming one job at a time takes them in the order the
    positions said."""
    ann = [await q.enqueue("image", {"n": i}, owner_id="ann") for i in range(3)]
    bob = await q.enqueue("image", {}, owner_id="bob")
    urgent = await q.enqueue("image", {}, owner_id="cat", priority=5)
    order = [urgent, ann[0], bob, ann[1], ann[2]]
    for place, job in enumerate(order):
        p = await q.position(job.id)
        assert (p.status, p.ahead, p.more, p.place) == (Status.PENDING, place, False, place + 1)
    claimed = [(await q.claim("w", limit=1, queues=None))[0].id for _ in order]
    assert claimed == [j.id for j in order]


async def test_estimates_come_from_recent_runs_and_live_workers(q: Either, raw_sql: Any) -> None:
    """Two slots, runs of 10 s: the first two jobs start now, the next two in 10 s, the
    fifth in 20 s; each finishes 10 s after it starts. Without a run of its kind to go by
    or without a live worker serving it, there is no estimate at all."""
    jobs = [await q.enqueue("image", {"n": i}) for i in range(5)]
    none = await q.position(jobs[4].id)
    assert none.ahead == 4 and none.capacity == 0
    assert none.start_in is none.finish_in is None and none.run_time is None
    assert none.describe() == "5th in line · no worker serves it"

    await completed_runs(q, raw_sql, 3, RUN)
    no_worker = await q.position(jobs[4].id, max_age=0)
    assert no_worker.run_time == pytest.approx(RUN)
    assert no_worker.start_in is None and no_worker.finish_in is None

    await live(q, "w1", ("default",), 2)
    await live(q, "w2", ("elsewhere",), 50)  # serves another queue: no help
    for i, job in enumerate(jobs):
        p = await q.position(job.id, max_age=0)
        assert (p.ahead, p.capacity) == (i, 2)
        assert p.start_in == pytest.approx(RUN * (i // 2))
        assert p.finish_in == pytest.approx(RUN * (i // 2) + RUN)
    assert (await q.position(jobs[2].id)).describe() == "3rd in line · about 20 s"

    # A running job holds its slot for what is left of its run.
    (running,) = await q.claim("w1", limit=1, queues=["default"])
    p = await q.position(running.id, max_age=0)
    assert (p.status, p.ahead, p.start_in) == (Status.PROCESSING, 0, None)
    assert p.finish_in is not None and RUN - 5 < p.finish_in <= RUN
    assert p.describe().startswith("running · about ")
    first_waiting = await q.position(jobs[1].id, max_age=0)
    second_waiting = await q.position(jobs[2].id, max_age=0)
    assert (first_waiting.ahead, first_waiting.start_in) == (0, 0)
    assert second_waiting.ahead == 1
    assert second_waiting.start_in is not None
    assert RUN - 5 < second_waiting.start_in <= RUN


async def test_a_final_job_has_no_place(q: Either) -> None:
    job = await q.enqueue("image", {})
    await q.cancel(job.id)
    p = await q.position(job.id)
    assert (p.status, p.ahead, p.start_in, p.finish_in) == (Status.CANCELLED, None, None, None)
    assert p.describe() == "" and p.place is None and p.measured_at is not None


async def test_a_job_not_yet_in_line_says_when_it_enters(q: Either) -> None:
    await q.enqueue("image", {})
    later = await q.enqueue("image", {}, delay=timedelta(minutes=5))
    p = await q.position(later.id)
    assert (p.status, p.ahead) == (Status.PENDING, None)
    assert p.enters_line_in is not None and 280 < p.enters_line_in <= 300
    assert p.describe() == "scheduled: enters the line in about 5 min"


async def test_counting_stops_at_the_limit(q: Either, raw_sql: Any) -> None:
    """Past ``limit`` jobs ahead it says "more than" and estimates nothing."""
    await completed_runs(q, raw_sql, 1, RUN)
    await live(q, "w1", ("default",), 1)
    jobs = [await q.enqueue("image", {"n": i}) for i in range(6)]
    p = await q.position(jobs[5].id, limit=3)
    assert (p.ahead, p.more, p.start_in, p.finish_in) == (3, True, None, None)
    assert p.describe() == "more than 3 jobs ahead"
    exact = await q.position(jobs[5].id, limit=5)
    assert (exact.ahead, exact.more) == (5, False)
    assert exact.finish_in == pytest.approx(6 * RUN)


async def test_jobs_of_the_workers_other_queues_count_when_they_come_first(q: Either) -> None:
    """A worker claims from all its queues in one line: another queue's job of a higher
    priority is ahead once a worker serves both queues, and not before."""
    mine = await q.enqueue("image", {})
    await q.enqueue("image", {}, queue="other", priority=3)
    assert (await q.position(mine.id)).ahead == 0
    await live(q, "both", ("default", "other"), 1)
    assert (await q.position(mine.id, max_age=0)).ahead == 1


async def test_only_the_owner_sees_the_position(q: Either) -> None:
    job = await q.enqueue("image", {}, owner_id="ann")
    assert (await q.position(job.id, owner_id="ann")).ahead == 0
    with pytest.raises(JobNotFound):
        await q.position(job.id, owner_id="bob")


async def test_an_answer_is_kept_a_few_seconds(q: Either) -> None:
    """Polled again at once, the kept answer comes back without a query; ``max_age=0``
    reads afresh."""
    job = await q.enqueue("image", {})
    first = await q.position(job.id)
    await q.claim("w", limit=1, queues=None)
    assert await q.position(job.id) is first
    fresh = await q.position(job.id, max_age=0)
    assert (fresh.status, fresh.ahead) == (Status.PROCESSING, 0)


async def test_without_the_live_workers_table_it_still_counts(q: Either, raw_sql: Any) -> None:
    """A caller that cannot read the live workers (the table hidden from its role, or
    missing) still gets the count; the capacity is unknown, so there is no estimate."""
    await q.enqueue("image", {})
    job = await q.enqueue("image", {})
    raw_sql(f"DROP TABLE {q.worker_statements.t.name}")
    p = await q.position(job.id)
    assert (p.ahead, p.capacity, p.start_in) == (1, None, None)
    assert p.describe() == "2nd in line"


def test_start_estimate_fills_the_slots_that_free_first() -> None:
    assert start_estimate(0, 0, 10, []) is None
    assert start_estimate(0, 1, 10, []) == 0
    assert start_estimate(3, 1, 10, []) == 30
    assert start_estimate(1, 2, 10, [4.0, 9.0]) == 6  # frees at 1 and 6; the 1 taken
    assert start_estimate(0, 1, 10, [1.0, 9.0]) == 1  # more running than slots
    assert start_estimate(0, 1, 10, [30.0]) == 0  # overran its estimate: free any moment


def test_typical_run_time_is_the_median() -> None:
    from datetime import UTC, datetime

    t = datetime(2026, 1, 1, tzinfo=UTC)
    runs = [(t, t + timedelta(seconds=s)) for s in (1, 5, 100)] + [(None, t)]
    assert typical_run_time(runs) == 5
    assert typical_run_time([]) is None


def test_words() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 102, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "102nd", "111th",
    ]  # fmt: skip
    assert [about(s) for s in (0.2, 40, 89, 200, 7200)] == [
        "any moment", "about 40 s", "about 89 s", "about 3 min", "about 2 h",
    ]  # fmt: skip


def test_the_cache_forgets_the_oldest_past_its_size() -> None:
    import uuid

    cache = PositionCache(max_age=60, size=2)
    made = [Position(uuid.uuid4(), Status.PENDING, i) for i in range(3)]
    for p in made:
        cache.put(p.job_id, p)
    assert cache.get(made[0].job_id) is None
    assert cache.get(made[2].job_id) is made[2]
    assert cache.get(made[2].job_id, max_age=0) is None
