"""The table of moves (schema.MOVES) is the single truth: the API may make exactly those moves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from jobqueue import MOVES, InvalidTransition, Job, JobQueueError, LeaseLost, Status
from jobqueue.models import FINAL_STATUSES, can_move, check_move, sources_of
from tests.conftest import Either

# Each API move: the status it leads to, and how to attempt it on a job.
Action = Callable[[Either, Job], Awaitable[Any]]
ACTIONS: dict[str, tuple[Status, Action]] = {
    "claim": (Status.PROCESSING, lambda q, j: q.claim("w2")),
    "complete": (Status.COMPLETED, lambda q, j: q.complete(j, {"ok": 1})),
    "fail": (Status.FAILED, lambda q, j: q.fail(j, "no", retry=False)),
    "fail-and-retry": (Status.PENDING, lambda q, j: q.fail(j, "again", retry=True)),
    "release": (Status.PENDING, lambda q, j: q.release(j)),
    "cancel": (Status.CANCELLED, lambda q, j: q.cancel(j.id)),
    "retry": (Status.PENDING, lambda q, j: q.retry(j.id)),
}
# Where each action may start. Together they must make up MOVES, no more and no less.
SOURCES: dict[str, set[Status]] = {
    "claim": {Status.PENDING},
    "complete": {Status.PROCESSING},
    "fail": {Status.PROCESSING},
    "fail-and-retry": {Status.PROCESSING},
    "release": {Status.PROCESSING},
    "cancel": {Status.PENDING, Status.PROCESSING},
    "retry": {Status.FAILED, Status.CANCELLED},
}


def test_actions_cover_exactly_the_table_of_moves() -> None:
    derived: dict[Status, set[Status]] = {s: set() for s in Status}
    for name, (target, _) in ACTIONS.items():
        for source in SOURCES[name]:
            derived[source].add(target)
    assert derived == {s: set(t) for s, t in MOVES.items()}


def test_final_statuses_have_no_way_out_but_retry() -> None:
    assert {Status.COMPLETED, Status.FAILED, Status.CANCELLED} == FINAL_STATUSES
    assert MOVES[Status.COMPLETED] == frozenset()
    for status in FINAL_STATUSES:
        assert MOVES[status] <= {Status.PENDING}


@pytest.mark.parametrize("source", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_check_move_agrees_with_the_table(source: Status, target: Status) -> None:
    allowed = target in MOVES[source]
    assert can_move(source, target) is allowed
    assert (source in sources_of(target)) is allowed
    if allowed:
        check_move(source, target)
    else:
        with pytest.raises(InvalidTransition, match=f"from {source} to {target}"):
            check_move(source, target)


async def _job_in(q: Either, status: Status) -> Job:
    job: Job = await q.enqueue("image", {"for": status.value}, max_attempts=5)
    if status is Status.PENDING:
        return job
    if status is Status.CANCELLED:
        cancelled: Job = await q.cancel(job.id)
        return cancelled
    (held,) = await q.claim("w1")
    if status is Status.PROCESSING:
        return held
    if status is Status.COMPLETED:
        done: Job = await q.complete(held)
        return done
    failed: Job = await q.fail(held, "boom", retry=False)
    return failed


@pytest.mark.parametrize("source", list(Status))
async def test_every_api_move_from_every_status(q: Either, source: Status) -> None:
    for name, (target, attempt) in ACTIONS.items():
        job = await _job_in(q, source)
        before = await q.get(job.id)
        outcome: Any
        try:
            outcome = await attempt(q, job)
        except (InvalidTransition, LeaseLost):
            outcome = None
        except JobQueueError as exc:  # pragma: no cover - a wrong error is a failure
            pytest.fail(f"{name} from {source} raised {exc!r}")
        after = await q.get(job.id)
        allowed = source in SOURCES[name]
        if name == "claim":
            outcome = [j for j in outcome or [] if j.id == job.id]
        if allowed:
            assert outcome, f"{name} from {source} was refused"
            assert after.status is target, f"{name} from {source} led to {after.status}"
            assert (after.completed_at is not None) is target.is_final
        else:
            assert not outcome, f"{name} from {source} was allowed"
            assert after == before, f"refused {name} from {source} still changed the row"
        # leave nothing claimable behind for the next action's claim
        if after.status is Status.PENDING or after.status is Status.PROCESSING:
            await q.cancel(after.id)
