"""What a job cost: reported by generators and handlers, stored exactly in its own columns by
the one writer of outcomes, kept by jobs that failed or were cancelled after they cost
money, and summed by `stats` — on SQLite and PostgreSQL, sync and async (the `q` fixture)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Completion, PayloadError, Status
from jobqueue.generators import MockGenerator
from jobqueue.worker import HandlerResult, Worker
from tests.conftest import Either


async def test_completion_and_failure_store_the_exact_cost(q: Either) -> None:
    """Costs that a float would round (0.1 + 0.2, six places) come back exact; every
    attempt's cost is added up; a job that never reported one keeps NULL."""
    a = await q.enqueue("image", {}, owner_id="ann")
    b = await q.enqueue("image", {}, owner_id="ann")
    c = await q.enqueue("image", {}, owner_id="bob")
    claimed = {j.id: j for j in await q.claim("w", limit=3, queues=None)}
    failed = await q.fail(
        claimed[a.id], "provider said no", retry=True, retry_in=0, cost="0.1", cost_unit="USD"
    )
    assert failed.status is Status.PENDING and failed.cost == Decimal("0.1")
    written = await q.complete_many(
        [
            Completion(claimed[b.id], {"ok": 1}, None, Decimal("0.123456"), "USD"),
            Completion(claimed[c.id], {"ok": 2}),
        ]
    )
    assert written == {b.id, c.id}
    [again] = await q.claim("w", limit=1, queues=None)
    done = await q.complete(again, {"ok": 3}, cost=Decimal("0.2"), cost_unit="USD")
    assert done.cost == Decimal("0.3") and str(done.cost) == "0.3"
    assert (await q.get(b.id)).cost == Decimal("0.123456")
    assert (await q.get(b.id)).cost_unit == "USD"
    nothing = await q.get(c.id)
    assert nothing.cost is None and nothing.cost_unit is None


async def test_bad_costs_are_refused_before_anything_is_written(q: Either) -> None:
    job = await q.enqueue("image", {})
    [held] = await q.claim("w", limit=1, queues=None)
    for bad in ("-1", "0.0000001", "nan", "1e13", True, [1]):
        with pytest.raises(PayloadError):
            await q.complete(held, {}, cost=bad)
    assert (await q.get(job.id)).status is Status.PROCESSING
    with pytest.raises(PayloadError):
        await q.complete(held, {}, cost="1", cost_unit="x" * 21)


async def test_a_cancelled_job_keeps_what_it_cost(q: Either) -> None:
    job = await q.enqueue("image", {}, owner_id="ann")
    [held] = await q.claim("w", limit=1, queues=None)
    await q.fail(held, "transient", cost="0.04", cost_unit="USD", retry=True, retry_in=60)
    cancelled = await q.cancel(job.id)
    assert cancelled.status is Status.CANCELLED and cancelled.cost == Decimal("0.04")


async def test_stats_sum_cost_per_status_kind_and_owner(q: Either) -> None:
    """ann: one completed (0.04) and one failed after it cost 0.04; bob: one cancelled
    before it cost anything, one completed in credits."""
    ann1 = await q.enqueue("image", {}, owner_id="ann")
    ann2 = await q.enqueue("email", {}, owner_id="ann")
    bob1 = await q.enqueue("image", {}, owner_id="bob")
    bob2 = await q.enqueue("image", {}, owner_id="bob")
    await q.cancel(bob2.id)
    held = {j.id: j for j in await q.claim("w", limit=3, queues=None)}
    await q.complete(held[ann1.id], {}, cost="0.04", cost_unit="USD")
    await q.fail(held[ann2.id], "no", retry=False, cost="0.04", cost_unit="USD")
    await q.complete(held[bob1.id], {}, cost="3", cost_unit="credits")

    by_owner = {(s.status, s.owner_id, s.cost_unit): s for s in await q.stats(by="owner")}
    assert by_owner[(Status.COMPLETED, "ann", "USD")].cost == Decimal("0.04")
    failed = by_owner[(Status.FAILED, "ann", "USD")]
    assert (failed.count, failed.cost, failed.charged) == (1, Decimal("0.04"), 1)
    cancelled = by_owner[(Status.CANCELLED, "bob", None)]
    assert (cancelled.count, cancelled.cost, cancelled.charged) == (1, Decimal(0), 0)
    assert by_owner[(Status.COMPLETED, "bob", "credits")].cost == Decimal("3")

    by_kind = {(s.status, s.kind, s.cost_unit): s for s in await q.stats(by="kind")}
    assert by_kind[(Status.FAILED, "email", "USD")].charged == 1
    completed = [s for k, s in by_kind.items() if k[:2] == (Status.COMPLETED, "image")]
    assert sorted(s.count for s in completed) == [1, 1]  # a line per unit

    mine = await q.stats(owner_id="ann")
    assert {s.owner_id for s in mine} == {"ann"}
    assert sum(s.cost for s in mine) == Decimal("0.08")
    assert sum(s.count for s in await q.stats()) == 4
    assert await q.stats(since=0.0, owner_id="ann") == []
    with pytest.raises(PayloadError, match="grouped by"):
        await q.stats(by="status")


async def test_generators_and_handlers_report_costs_through_the_worker(
    migrated: tuple[str, str],
) -> None:
    """The mock's configured cost, a handler's `HandlerResult` cost, and a failed mock
    generation's cost (charged all the same) reach the jobs' columns; a handler's cost
    that cannot be stored is dropped and its result kept."""

    def priced(job: Any, ctx: Any) -> HandlerResult:
        return HandlerResult({"sent": True}, cost=job.payload["cost"], cost_unit="USD")

    url, table = migrated
    jq = AsyncJobQueue(url, table=table)
    try:
        await _run_priced(jq, priced)
    finally:
        await jq.close()


async def _run_priced(jq: AsyncJobQueue, priced: Any) -> None:
    ok = await jq.enqueue("image", {"prompt": "a fox"})
    mail = await jq.enqueue("email", {"cost": "0.0015"})
    odd = await jq.enqueue("email", {"cost": "-3"})
    worker = Worker(
        jq,
        {"image": MockGenerator(delay=0, cost="0.04", cost_unit="USD"), "email": priced},
        listen=False,
        poll_interval=0.05,
    )
    await worker.run_until_idle()
    assert (await jq.get(ok.id)).cost == Decimal("0.04")
    assert (await jq.get(mail.id)).cost == Decimal("0.0015")
    kept = await jq.get(odd.id)
    assert kept.status is Status.COMPLETED and kept.result == {"sent": True} and kept.cost is None

    bad = await jq.enqueue("image", {"prompt": "a fox"}, max_attempts=1)
    failing = MockGenerator(delay=0, failure_rate=1.0, cost="0.04", cost_unit="USD")
    await Worker(jq, {"image": failing}, listen=False, poll_interval=0.05).run_until_idle()
    lost = await jq.get(bad.id)
    assert lost.status is Status.FAILED and lost.cost == Decimal("0.04")


async def test_a_cost_written_by_another_client_that_is_no_amount_is_refused(
    q: Either, raw_sql: Any
) -> None:
    job = await q.enqueue("image", {})
    table = q.table.name
    for bad in ("-1", "'lots'", "0.5" if not q.is_postgres else "-0.5"):
        with pytest.raises(Exception, match=r"cost_check|invalid input"):
            raw_sql(f"UPDATE {table} SET cost = {bad} WHERE id = '{_id(q, job.id)}'")
    assert (await q.get(job.id)).cost is None


def _id(q: Either, job_id: Any) -> str:
    return str(job_id) if q.is_postgres else job_id.hex
