"""Fair share between owners: the turns jobs take in the line, and the order claims follow.

Every test runs on SQLite and PostgreSQL, through the sync and the async queue.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.exc import IntegrityError

from jobqueue import NewJob

from ..conftest import Either


async def claim_all(q: Either, batch: int = 4) -> list[Any]:
    """Claim every due job, ``batch`` at a time: the order a worker would start them in."""
    order = []
    while jobs := await q.claim("w", limit=batch):
        order.extend(jobs)
    return order


async def test_a_single_job_waits_one_round_behind_a_backlog_of_1000(q: Either) -> None:
    await q.enqueue_many([NewJob(owner_id="A") for _ in range(1000)])
    singles = [await q.enqueue(owner_id=o) for o in ("B", "C", "D")]
    first = await q.claim("w", limit=8)
    owners = [j.owner_id for j in first]
    # One job of each owner first (A's first was ahead of them all), then A again.
    assert owners[:4] == ["A", "B", "C", "D"], owners
    assert {j.id for j in singles} <= {j.id for j in first}


async def test_owners_take_turns_and_each_owner_keeps_its_order(q: Either) -> None:
    a = await q.enqueue_many([NewJob(owner_id="A", payload={"n": i}) for i in range(6)])
    b = await q.enqueue_many([NewJob(owner_id="B", payload={"n": i}) for i in range(3)])
    order = await claim_all(q, batch=2)
    assert [j.owner_id for j in order] == ["A", "B"] * 3 + ["A"] * 3
    assert [j.id for j in order if j.owner_id == "A"] == [j.id for j in a]
    assert [j.id for j in order if j.owner_id == "B"] == [j.id for j in b]


async def test_an_owner_with_twice_the_weight_gets_two_jobs_a_round(q: Either) -> None:
    await q.set_limit("paying", scope="owner", weight=2)
    await q.enqueue_many([NewJob(owner_id="paying") for _ in range(8)])
    await q.enqueue_many([NewJob(owner_id="free") for _ in range(4)])
    order = [j.owner_id for j in await claim_all(q, batch=3)]
    assert order[:6] == ["paying", "free", "paying", "paying", "free", "paying"], order


async def test_jobs_without_an_owner_share_one_turn(q: Either) -> None:
    await q.enqueue_many([NewJob() for _ in range(4)])
    await q.enqueue_many([NewJob(owner_id="B") for _ in range(2)])
    order = [j.owner_id for j in await claim_all(q, batch=8)]
    assert order == [None, "B", None, "B", None, None]


async def test_priority_comes_before_turns(q: Either) -> None:
    await q.enqueue_many([NewJob(owner_id="A") for _ in range(3)])
    urgent = await q.enqueue(owner_id="A", priority=5)
    (first,) = await q.claim("w")
    assert first.id == urgent.id


async def test_a_batch_gets_the_same_turns_as_jobs_enqueued_one_by_one(q: Either) -> None:
    """Large batches on PostgreSQL are COPYed: their turns are computed apart from the
    INSERT's, and must agree with them."""
    batch = await q.enqueue_many([NewJob(owner_id=f"o{i % 3}") for i in range(300)])
    assert [j.turn for j in batch[:6]] == [0, 0, 0, 1, 1, 1]
    assert batch[-1].turn == 99
    stored = {j.id: j.turn for j in await q.list(limit=1000)}
    assert all(stored[j.id] == j.turn for j in batch)
    one = await q.enqueue(owner_id="o0")
    assert one.turn == 100


async def test_a_scheduled_job_enters_the_line_when_due(q: Either) -> None:
    # Due in 3 s: a claim right after the enqueue took over a second in a CI run on a
    # loaded machine, and a job due by then is rightly claimed.
    later = await q.enqueue(owner_id="A", delay=timedelta(seconds=3))
    assert later.turn is None
    assert await q.claim("w") == []
    await _sleep(3.2)
    (job,) = await q.claim("w")
    assert job.id == later.id and job.turn is not None


async def test_a_retried_job_is_claimable_at_once_with_a_new_turn(q: Either) -> None:
    job = await q.enqueue(owner_id="A", max_attempts=1)
    (held,) = await q.claim("w")
    await q.fail(held, "boom")
    again = await q.retry(job.id)
    assert again.turn is None
    (claimed,) = await q.claim("w")
    assert claimed.id == job.id


async def test_a_row_inserted_by_another_client_enters_the_line(
    q: Either, raw_sql: Callable[..., list[Any]], migrated: tuple[str, str]
) -> None:
    """A web front end inserting through Supabase (or psql) knows nothing of turns.

    B's job enters at the head of the line, beside A's first job (the same turn: the id
    breaks the tie, and the database's random id may sort before or after ours), so the
    first two claimed are one of each, in either order."""
    table = migrated[1]
    await q.enqueue_many([NewJob(owner_id="A") for _ in range(5)])
    raw_sql(f"INSERT INTO {table} (owner_id, kind) VALUES ('B', 'image')")
    assert await q.enter_line() == 1
    claimed = [j.owner_id for j in await q.claim("w", limit=2)]
    assert sorted(claimed) == ["A", "B"]


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@pytest.mark.parametrize("turn", ["'NaN'", "1e300", "'-Infinity'"])
def test_a_turn_outside_the_bounds_is_refused(
    raw_sql: Callable[..., list[Any]], migrated: tuple[str, str], turn: str, db_url: str
) -> None:
    if db_url.startswith("sqlite") and "'" in turn:
        pytest.skip("SQLite has no NaN or infinite literals as text")
    with pytest.raises(IntegrityError, match=r"turn_check|CHECK constraint"):
        raw_sql(f"INSERT INTO {migrated[1]} (turn) VALUES ({turn})")


def test_the_timers_entry_leaves_rows_another_entry_holds_to_it(
    postgres_url: str, table_name: str
) -> None:
    """The worker's timer enters jobs with ``skip_locked``: rows another entry holds now
    (a claim that found nothing enters jobs itself) are left to that entry at once, not
    waited for. Waiting, the timer would lock them past that entry's commit (PostgreSQL
    locks a row before re-checking it), and the claim right after the entry would skip
    them as locked and find nothing due."""
    import time

    from jobqueue import JobQueue, migrate

    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        with q.engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO {table_name} (kind) VALUES ('image')")
        entering = q.statements.entering()
        with q.engine.connect() as other, other.begin():
            assert len(other.execute(entering.statement).all()) == 1  # holds the row
            began = time.monotonic()
            assert q.enter_line(skip_locked=True) == 0
            assert time.monotonic() - began < 2  # not held up until the lock timeout
        assert q.enter_line(skip_locked=True) == 1
        (job,) = q.claim("w")
        assert job.kind == "image"
