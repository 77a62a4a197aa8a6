"""Every operation keeps the promise it declares (`jobqueue.operations.Access`), on both
databases: the queue runs it on the connection that promise asks for, so a second write in
an operation declared ``ONE_WRITE`` would run in autocommit mode on PostgreSQL, not
atomically. The queue trusts the declaration; these tests check it, by running every
declared operation through the queue's public methods, on the paths that make the most
statements (a fence that lost its lease, an idempotency key already used, a COPY, a move
the table of moves refuses), and counting the writes each made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from jobqueue import Completion, JobQueue, JobQueueError, NewJob, migrate
from jobqueue.models import WorkerPresence
from jobqueue.operations import COPY_MIN_JOBS, Access, Operation
from jobqueue.operations.contract import DECLARED
from jobqueue.operations.schedules import define_schedule
from jobqueue.sql.steps import Rows, Step

T = TypeVar("T")

#: How many writes each declaration allows.
MOST_WRITES = {Access.READ: 0, Access.ONE_WRITE: 1, Access.TRANSACTION: None}
#: The operation each database runs for `complete_and_claim` (one statement or two).
ONLY_ON = {
    "jobqueue.operations.jobs._complete_and_claim_at_once": "postgresql",
    "jobqueue.operations.jobs._complete_then_claim": "sqlite",
}


def recorded(op: Operation[T], seen: list[tuple[str, Access, list[Step]]]) -> Operation[T]:
    """``op`` with every step it yields noted in ``seen``."""
    steps: list[Step] = []
    seen.append((op.name, op.access, steps))

    def run() -> Generator[Step, Rows, T]:
        body = op.steps
        try:
            step = next(body)
            while True:
                steps.append(step)
                step = body.send((yield step))
        except StopIteration as done:
            value: T = done.value
            return value

    return Operation(op.access, run(), op.name)


def refused(call: Callable[[], Any]) -> None:
    """Run a call that the queue refuses (our error), after its longest path."""
    with pytest.raises(JobQueueError):
        call()


def exercise(q: JobQueue) -> None:
    """Every queue method, on the paths that make the most statements."""
    q.enqueue("image", {"n": 1})
    q.enqueue("image", {"n": 2}, idempotency_key="k", owner_id="o")
    q.enqueue("image", {"n": 2}, idempotency_key="k", owner_id="o")  # the existing job
    q.enqueue_many([NewJob(payload={"n": i}) for i in range(COPY_MIN_JOBS)])  # COPY
    q.enqueue_many([NewJob(payload={}, idempotency_key="k", owner_id="o"), NewJob()])
    first, second, third, fourth = q.claim("w", limit=4, queues=None)
    q.heartbeat(first)
    q.heartbeat_many("w", [first, second])
    q.set_progress(first, 50, "half")
    q.save_remote_task_id(first, "task-1")
    q.complete(first, {"ok": True})
    refused(lambda: q.complete(first))  # lost: the write matches nothing, then a read
    refused(lambda: q.heartbeat(first))
    refused(lambda: q.set_progress(first, 60))
    refused(lambda: q.save_remote_task_id(first, "t"))
    q.complete_many([Completion(second)])
    _, held = q.complete_and_claim([Completion(third)], "w", limit=2, queues=None)
    q.complete_and_claim([], "w", limit=1, queues=[])  # asks for no queue
    q.fail(fourth, "boom", retry=True, retry_in=0)
    refused(lambda: q.fail(fourth, "again"))
    q.release(held[0])
    refused(lambda: q.release(held[0]))
    q.fail(held[1], "for good", retry=False)
    q.retry(held[1])
    refused(lambda: q.retry(held[1]))  # pending now: refused, explained by two reads
    pending = q.enqueue("image", {})
    q.cancel(pending)
    refused(lambda: q.cancel(pending))  # final: refused
    refused(lambda: q.cancel(q.enqueue("image", {}, owner_id="a"), owner_id="b"))
    q.get(pending)
    q.position(q.enqueue("image", {}))  # every read a pending job in line makes
    q.list(status="pending", since=timedelta(hours=1))
    q.stats()
    q.gauges()
    q.backlog()
    q.reap()
    q.expire()
    q.cancel_if_pending(q.enqueue("image", {}).id)
    q.prune(older_than=0)
    me = WorkerPresence("w", ("default",), None, 1)
    q.worker_beat(me, ttl=30)
    q.live_workers()
    q.check_worker_access()
    q.sweep_workers()
    q.worker_gone("w")
    # Scheduling: with limits in force a claim learns it and claims within them (locks the
    # rows, claims what fits, records the starts a rate counts).
    q.set_limit("image", max_running=50, max_running_per_owner=10, rate=100, per=60)
    q.set_limit("o", scope="owner", weight=2)
    q.list_limits()
    q.enqueue_many([NewJob(payload={"n": i}, owner_id="o") for i in range(4)])
    q.enter_line()
    limited = q.claim("w", limit=2, queues=None)
    assert q.claims_within_limits and len(limited) == 2
    _, more = q.complete_and_claim([Completion(limited[0])], "w", limit=1, queues=None)
    assert len(more) == 1
    q.retry_later(limited[1], 60, "the provider said 429")  # and pauses its key
    refused(lambda: q.retry_later(limited[1], 60, "again"))  # no longer held
    q.pause("default", duration=60, reason="maintenance")
    q.resume("default")
    assert q.remove_limit("image") and not q.remove_limit("image")
    # The admin dashboard: its grouped reads, a filtered page by keyset, retrying many.
    q.overview()
    page = q.job_page(status="pending", kind="image", limit=1)
    assert page.after is not None
    q.job_page(owner_id="o", queue="default", created_from=page.after[0], after=page.after)
    q.fail(q.claim("w", limit=1, queues=None)[0], "for good", retry=False)
    assert len(q.retry_many([j.id for j in q.list(status="failed")])) >= 1
    # Budgets: an owner with one is enqueued within it (lock, sum, insert), or refused.
    q.set_budget("rich", "1", period="day")
    q.get_budget("rich")
    q.list_budgets()
    q.enqueue("image", {}, owner_id="rich", estimated_cost="1", idempotency_key="b")
    q.enqueue("image", {}, owner_id="rich", estimated_cost="1", idempotency_key="b")
    refused(lambda: q.enqueue("image", {}, owner_id="rich", estimated_cost="1"))
    q.set_budget("rich", "100", period="month")
    q.enqueue_many([NewJob(payload={"n": i}, owner_id="rich") for i in range(COPY_MIN_JOBS)])
    assert q.remove_budget("rich") and not q.remove_budget("rich")
    # Periodic jobs: a round that moves a due schedule on and enqueues its tick's job.
    q.add_schedule("tick", kind="image", every=1)
    q.declare_schedules([define_schedule("other", kind="image", every=60)])
    q.list_schedules()
    time.sleep(max(0.0, (q.list_schedules()[1].next_tick - datetime.now(UTC)).total_seconds()))
    # One job per due tick: a loaded machine may wake past a second one (each enqueued).
    assert len(q.run_schedules().enqueued) >= 1
    assert q.pause_schedule("tick") and q.resume_schedule("tick")
    assert q.remove_schedule("tick") and not q.remove_schedule("tick")


@pytest.fixture
def queue_seen(
    db_url: str, table_name: str
) -> Iterator[tuple[JobQueue, list[tuple[str, Access, list[Step]]]]]:
    migrate(db_url, table=table_name)
    q = JobQueue(db_url, table=table_name)
    seen: list[tuple[str, Access, list[Step]]] = []
    run = q._run

    def run_recorded(op: Operation[Any], connection: Any = None) -> Any:
        return run(recorded(op, seen), connection)

    q._run = run_recorded  # type: ignore[method-assign]
    yield q, seen
    q.close()


def test_every_operation_makes_no_more_writes_than_it_declares(
    queue_seen: tuple[JobQueue, list[tuple[str, Access, list[Step]]]],
) -> None:
    q, seen = queue_seen
    exercise(q)
    for name, access, steps in seen:
        writes = sum(step.writes for step in steps)
        most = MOST_WRITES[access]
        assert most is None or writes <= most, (name, access, steps)


def test_every_declared_operation_is_checked(
    queue_seen: tuple[JobQueue, list[tuple[str, Access, list[Step]]]],
) -> None:
    """A new operation needs a line in `exercise`, or its declaration goes unchecked."""
    q, seen = queue_seen
    exercise(q)
    expected = {name for name in DECLARED if ONLY_ON.get(name, q.dialect) == q.dialect}
    assert {name for name, _, _ in seen} == expected
