"""Budgets that cannot be overspent: an owner's budget reserves each job's estimated cost at
enqueue and refuses past it; completion settles the real cost; a failure before anything
was spent, a cancel before the start and expiry release the reservation — on SQLite and
PostgreSQL, sync and async (the `q` fixture), and under racing threads and processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from jobqueue import (
    AsyncJobQueue,
    BudgetExceeded,
    JobQueue,
    NewJob,
    PayloadError,
    Registry,
    Status,
)
from jobqueue.operations import Operation
from jobqueue.sql.steps import Step
from tests.conftest import Either

from . import racers

E = Decimal("0.25")  # one job's estimate in these tests


async def test_set_get_list_and_remove_a_budget(q: Either) -> None:
    assert await q.get_budget("ann") is None
    made = await q.set_budget("ann", "10", period="day", cost_unit="USD")
    assert (made.owner_id, made.amount, made.period, made.cost_unit) == ("ann", 10, "day", "USD")
    assert made.spent == 0 and made.remaining == 10 and made.since is not None
    await q.set_budget("bob", Decimal("2.5"), period="balance")
    changed = await q.set_budget("ann", 20, period="month")
    assert (changed.amount, changed.period, changed.cost_unit) == (20, "month", None)
    assert changed.since is not None and changed.since.day == 1
    listed = await q.list_budgets()
    assert [(b.owner_id, b.period) for b in listed] == [("ann", "month"), ("bob", "balance")]
    assert listed[1].since is None  # a balance never starts over
    assert await q.remove_budget("ann") and not await q.remove_budget("ann")
    assert await q.get_budget("ann") is None
    for bad in ({"period": "week"}, {"amount": "-1"}, {"amount": "0.0000001"}):
        args: dict[str, Any] = {"amount": "1", "period": "day"} | bad
        with pytest.raises(PayloadError):
            await q.set_budget("carl", args.pop("amount"), **args)


async def test_enqueue_reserves_and_refuses_past_the_budget(q: Either) -> None:
    await q.set_budget("ann", 3 * E, period="day")
    jobs = [await q.enqueue("image", {}, owner_id="ann", estimated_cost=E) for _ in range(3)]
    assert [j.reserved for j in jobs] == [E] * 3
    assert (await q.get(jobs[0].id)).reserved == E
    with pytest.raises(BudgetExceeded) as refused:
        await q.enqueue("image", {}, owner_id="ann", estimated_cost=E)
    exc = refused.value
    assert (exc.owner_id, exc.amount, exc.spent, exc.requested) == ("ann", 3 * E, 3 * E, E)
    assert "over budget" in exc.message
    # The hint's command keeps the budget's own period (`budget set` replaces it whole).
    assert "`jobqueue budget set ann AMOUNT --period day`" in exc.hint
    assert len(await q.list(owner_id="ann")) == 3  # nothing was written
    # Other owners, with a budget of their own or none, are not held to ann's.
    await q.enqueue("image", {}, owner_id="bob", estimated_cost=E)
    await q.enqueue("image", {}, estimated_cost=E)
    assert (await q.get_budget("ann")).remaining == 0  # type: ignore[union-attr]


async def test_a_batch_is_enqueued_whole_or_not_at_all(q: Either) -> None:
    await q.set_budget("ann", 2 * E, period="month")
    batch = [
        NewJob(owner_id="bob"),
        NewJob(owner_id="ann", estimated_cost=E),
        NewJob(owner_id="ann", estimated_cost=E),
        NewJob(owner_id="ann", estimated_cost=E),
    ]
    with pytest.raises(BudgetExceeded) as refused:
        await q.enqueue_many(batch)
    assert "budget set ann AMOUNT --period month`" in refused.value.hint
    assert await q.list() == []
    done = await q.enqueue_many(batch[:3])
    assert [j.reserved for j in done] == [None, E, E]


async def test_estimates_come_from_the_caller_else_the_queue_by_kind(
    migrated: tuple[str, str],
) -> None:
    url, table = migrated
    q = JobQueue(url, table=table, estimated_costs={"image": "0.5"})
    try:
        q.set_budget("ann", 1, period="day")
        assert q.enqueue("image", {}, owner_id="ann").reserved == Decimal("0.5")
        assert q.enqueue("image", {}, owner_id="ann", estimated_cost="0.25").reserved == E
        # No estimate at all: it reserves nothing, while something is left.
        assert q.enqueue("email", {}, owner_id="ann").reserved == 0
        assert q.enqueue("image", {}, owner_id="ann", estimated_cost="0.25").reserved == E
        with pytest.raises(BudgetExceeded):  # used up: even a job without an estimate
            q.enqueue("email", {}, owner_id="ann")
        jobs = Registry(image=False)
        jobs.add("video", lambda job, ctx: None, estimated_cost="0.75")
        q.set_budget("bob", 1, period="day")
        assert jobs.enqueue(q, "video", {}, owner_id="bob").reserved == Decimal("0.75")
        with pytest.raises(BudgetExceeded):
            jobs.enqueue(q, "video", {}, owner_id="bob")
        with pytest.raises(PayloadError):
            q.enqueue("image", {}, owner_id="ann", estimated_cost="-1")
    finally:
        q.close()


async def test_an_idempotent_repeat_reserves_nothing_again(q: Either) -> None:
    await q.set_budget("ann", E, period="day")
    first = await q.enqueue("image", {}, owner_id="ann", estimated_cost=E, idempotency_key="k")
    again = await q.enqueue("image", {}, owner_id="ann", estimated_cost=E, idempotency_key="k")
    assert again.id == first.id
    with pytest.raises(BudgetExceeded):
        await q.enqueue("image", {}, owner_id="ann", estimated_cost=E, idempotency_key="k2")


async def test_completion_settles_the_real_cost(q: Either) -> None:
    await q.set_budget("ann", 4 * E, period="day")
    job = await q.enqueue("image", {}, owner_id="ann", estimated_cost=2 * E)
    [held] = await q.claim("w", limit=1)
    # Running: what it has cost so far, or its reservation, whichever is more.
    await q.fail(held, "transient", retry=True, retry_in=0, cost=3 * E)
    assert (await q.get_budget("ann")).spent == 3 * E  # type: ignore[union-attr]
    [held] = await q.claim("w", limit=1)
    done = await q.complete(held, {}, cost="0.1")
    assert done.id == job.id
    spent = (await q.get_budget("ann")).spent  # type: ignore[union-attr]
    assert spent == 3 * E + Decimal("0.1")  # what it cost, not what it reserved
    other = await q.enqueue("image", {}, owner_id="ann", estimated_cost="0.1")
    [held] = await q.claim("w", limit=1)
    await q.complete(held, {}, cost=0)  # cheaper than reserved: the rest comes back
    assert (await q.get_budget("ann")).spent == spent  # type: ignore[union-attr]
    assert other.reserved == Decimal("0.1")


async def test_failure_before_any_cost_cancel_before_start_and_expiry_release(
    q: Either,
) -> None:
    await q.set_budget("ann", E, period="day")

    async def spent() -> Decimal:
        budget = await q.get_budget("ann")
        assert budget is not None
        return budget.spent

    await q.enqueue("image", {}, owner_id="ann", estimated_cost=E)
    [held] = await q.claim("w", limit=1)
    assert await spent() == E
    await q.fail(held, "the provider refused the prompt", retry=False)
    assert await spent() == 0  # failed before anything was submitted or spent

    pending = await q.enqueue("image", {}, owner_id="ann", estimated_cost=E)
    assert await spent() == E
    await q.cancel(pending.id)
    assert await spent() == 0

    await q.enqueue("image", {}, owner_id="ann", estimated_cost=E, expires_in=0.2)
    await asyncio.sleep(0.4)
    [expired] = await q.expire()
    assert expired.status is Status.EXPIRED and await spent() == 0
    await q.enqueue("image", {}, owner_id="ann", estimated_cost=E)  # room again


async def test_costs_in_another_unit_do_not_count(q: Either) -> None:
    await q.set_budget("ann", 1, period="day", cost_unit="USD")
    await q.enqueue("image", {}, owner_id="ann")
    await q.enqueue("image", {}, owner_id="ann")
    a, b = await q.claim("w", limit=2)
    await q.complete(a, {}, cost="0.5", cost_unit="USD")
    await q.complete(b, {}, cost="40", cost_unit="credits")
    assert (await q.get_budget("ann")).spent == Decimal("0.5")  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("period", "back", "counted"),
    [("day", "1 day", False), ("month", "32 days", False), ("balance", "400 days", True)],
)
async def test_periods_roll_over_by_the_database_clock(
    q: Either,
    raw_sql: Callable[..., list[Any]],
    migrated: tuple[str, str],
    period: str,
    back: str,
    counted: bool,
) -> None:
    """A job created before the period began (moved back in SQL) no longer counts; a
    prepaid balance counts every job it ever had."""
    table = migrated[1]
    await q.set_budget("ann", 1, period=period)
    old = await q.enqueue("image", {}, owner_id="ann", estimated_cost=1)
    await q.enqueue("image", {}, owner_id="bob", estimated_cost=1)
    if q.dialect == "postgresql":
        raw_sql(
            f"UPDATE {table} SET created_at = created_at - interval '{back}' WHERE id = :id",
            id=old.id,
        )
    else:
        raw_sql(
            f"UPDATE {table} SET created_at = strftime('%Y-%m-%d %H:%M:%f000', 'now', "
            f"'-{back}') WHERE id = :id",
            id=old.id.hex,
        )
    assert (await q.get_budget("ann")).spent == (1 if counted else 0)  # type: ignore[union-attr]
    if counted:
        with pytest.raises(BudgetExceeded):
            await q.enqueue("image", {}, owner_id="ann", estimated_cost=1)
    else:
        await q.enqueue("image", {}, owner_id="ann", estimated_cost=1)


async def test_prune_keeps_what_still_counts(q: Either) -> None:
    """A prepaid balance's jobs count forever and this period's jobs count until it ends:
    prune keeps them, and removes the rest as before."""
    await q.set_budget("ann", 10, period="balance")
    await q.set_budget("bob", 10, period="day")
    for owner in ("ann", "bob", "carl", None):
        await q.enqueue("image", {}, owner_id=owner, estimated_cost=1)
    for held in await q.claim("w", limit=4):
        await q.complete(held, {}, cost=1)
    assert await q.prune(older_than=0) == 2  # carl's and the unowned job
    assert {j.owner_id for j in await q.list()} == {"ann", "bob"}
    assert (await q.get_budget("ann")).spent == 1  # type: ignore[union-attr]
    await q.remove_budget("bob")
    assert await q.prune(older_than=0) == 1


def _recorded(q: JobQueue) -> list[tuple[str, list[Step]]]:
    """The operations ``q`` runs from now on, each with the steps (statements) it yields."""
    seen: list[tuple[str, list[Step]]] = []
    run = q._run

    def recording(op: Operation[Any], connection: Any = None) -> Any:
        steps: list[Step] = []
        seen.append((op.name.rsplit(".", 1)[-1], steps))

        def body() -> Any:
            gen = op.steps
            try:
                step = next(gen)
                while True:
                    steps.append(step)
                    step = gen.send((yield step))
            except StopIteration as done:
                return done.value

        return run(Operation(op.access, body(), op.name), connection)

    q._run = recording  # type: ignore[method-assign]
    return seen


def test_an_owner_without_a_budget_keeps_the_single_statement(queue: JobQueue) -> None:
    """Unowned jobs run the statement they ran before budgets (no look at the budgets
    table); an owner without a budget runs one guarded statement; an owner with one
    runs the guarded statement, then the enqueue within budgets."""
    queue.set_budget("ann", 1, period="day")
    queue.enqueue("image", {})  # the first learns whether the role may place its jobs
    seen = _recorded(queue)

    queue.enqueue("image", {})
    ((name, steps),) = seen
    assert name == "enqueue_many" and len(steps) == 1
    assert "_budgets" not in str(steps[0].statement)

    seen.clear()
    queue.enqueue("image", {}, owner_id="bob")
    ((name, steps),) = seen
    assert name == "enqueue_many" and len(steps) == 1
    assert "_budgets" in str(steps[0].statement)

    seen.clear()
    queue.enqueue_many([NewJob(owner_id="bob"), NewJob(owner_id="carl")])
    assert [name for name, _ in seen] == ["enqueue_many"]
    if queue.dialect == "postgresql":
        assert len(seen[0][1]) == 1  # the array INSERT, guarded

    seen.clear()
    queue.enqueue("image", {}, owner_id="ann", estimated_cost="0.5")
    assert [name for name, _ in seen] == ["enqueue_many", "enqueue_within_budgets"]
    assert len(seen[0][1]) == 1
    assert queue.get_budget("ann").spent == Decimal("0.5")  # type: ignore[union-attr]


# -- racing enqueues ----------------------------------------------------------------------------


def test_racing_threads_cannot_overspend(migrated: tuple[str, str]) -> None:
    """8 threads enqueue for one owner, 5 jobs each, against a budget for exactly 10 jobs:
    exactly 10 are accepted."""
    url, table = migrated
    queue = JobQueue(url, table=table)
    try:
        queue.set_budget("ann", 10 * E, period="day")
        accepted, refused = [], []
        start = threading.Barrier(8)

        def enqueue() -> None:
            start.wait()
            for _ in range(5):
                try:
                    accepted.append(queue.enqueue("image", {}, owner_id="ann", estimated_cost=E))
                except BudgetExceeded:
                    refused.append(1)

        threads = [threading.Thread(target=enqueue) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (len(accepted), len(refused)) == (10, 30)
        assert len(queue.list(owner_id="ann", limit=100)) == 10
        assert queue.get_budget("ann").spent == 10 * E  # type: ignore[union-attr]
    finally:
        queue.close()


async def test_racing_async_enqueues_cannot_overspend(migrated: tuple[str, str]) -> None:
    url, table = migrated
    aqueue = AsyncJobQueue(url, table=table)
    try:
        await aqueue.set_budget("ann", 10 * E, period="day")

        async def one() -> bool:
            try:
                await aqueue.enqueue("image", {}, owner_id="ann", estimated_cost=E)
                return True
            except BudgetExceeded:
                return False

        results = await asyncio.gather(*(one() for _ in range(24)))
        assert sum(results) == 10
    finally:
        await aqueue.close()


def test_racing_processes_cannot_overspend(migrated: tuple[str, str]) -> None:
    """2 processes, 4 threads each, enqueue for one owner against a budget for 10 jobs."""
    url, table = migrated
    queue = JobQueue(url, table=table)
    try:
        queue.set_budget("ann", 10 * E, period="day")
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(2)
        try:
            counts = pool.starmap(racers.enqueue_racing, [(url, table, "ann", str(E), 4, 5)] * 2)
        finally:
            pool.close()  # the processes end on their own, their connections closed
            pool.join()
        assert sum(accepted for accepted, _ in counts) == 10
        assert sum(refused for _, refused in counts) == 30
        assert len(queue.list(owner_id="ann", limit=100)) == 10
    finally:
        queue.close()


def test_in_the_callers_transaction_a_rollback_takes_the_reservation_back(
    queue: JobQueue,
) -> None:
    """With ``connection=``, the reservation is the caller's write like the job: it counts
    once they commit, and a rollback leaves nothing reserved."""
    queue.set_budget("ann", E, period="day")
    queue.enqueue("image", {})  # learn the placement outside the caller's transaction
    with queue.engine.connect() as conn:
        job = queue.enqueue("image", {}, owner_id="ann", estimated_cost=E, connection=conn)
        assert job.reserved == E
        conn.rollback()
    assert queue.get_budget("ann").spent == 0  # type: ignore[union-attr]
    with queue.engine.begin() as conn:
        queue.enqueue("image", {}, owner_id="ann", estimated_cost=E, connection=conn)
    with pytest.raises(BudgetExceeded), queue.engine.begin() as conn:
        queue.enqueue("image", {}, owner_id="ann", estimated_cost=E, connection=conn)
    assert len(queue.list(owner_id="ann")) == 1


@pytest.mark.postgres
def test_the_sum_reads_the_owner_index(postgres_url: str, table_name: str) -> None:
    """What an owner spent is read through ``<table>_owner_idx``, bounded by the period,
    not by a scan of the table (20,000 jobs of 200 owners, analysed)."""
    from sqlalchemy import text

    from jobqueue import migrate
    from jobqueue.testing import statement_as_sent

    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        q.set_budget("user-7", 1000, period="balance")
        with q.engine.begin() as conn:
            conn.execute(
                text(
                    f'INSERT INTO "{table_name}" (payload, owner_id, reserved)'
                    " SELECT '{}', 'user-' || (g % 200), 1 FROM generate_series(1, 20000) g"
                )
            )
            conn.execute(text(f'ANALYZE "{table_name}"'))
        step = q.statements.budgets_with_spent(["user-7"])
        sql, parameters = statement_as_sent(q.engine, step.statement, step.params)
        with q.engine.connect() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            rows = raw.execute("EXPLAIN " + sql, parameters).fetchall()
        assert q.get_budget("user-7").spent == 100  # type: ignore[union-attr]
    plan = "\n".join(r[0] for r in rows)
    assert f"{table_name}_owner_idx" in plan, plan
    assert f"Seq Scan on {table_name} " not in plan, plan
