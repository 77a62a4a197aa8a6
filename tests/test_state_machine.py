"""The state machine (`jobqueue.models`: `Status`, `MOVES` and the checks built on them) is
exactly the table written out below, and the API makes exactly those moves.

The expected table is spelled out here, status by status, rather than derived from `MOVES`:
a change to the state machine must change this file too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from jobqueue import MOVES, InvalidTransition, Job, JobQueueError, LeaseLost, Status
from jobqueue.models import FINAL_STATUSES, can_move, check_move, sources_of
from tests.conftest import Either

PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED, EXPIRED = (
    Status.PENDING,
    Status.PROCESSING,
    Status.COMPLETED,
    Status.FAILED,
    Status.CANCELLED,
    Status.EXPIRED,
)

# Every status to every status: may a job move so?
#                        to: pending processing completed failed cancelled expired
COLUMNS = (PENDING, PROCESSING, COMPLETED, FAILED, CANCELLED, EXPIRED)
EXPECTED: dict[Status, tuple[bool, bool, bool, bool, bool, bool]] = {
    PENDING: (False, True, False, False, True, True),
    PROCESSING: (True, False, True, True, True, False),
    COMPLETED: (False, False, False, False, False, False),
    FAILED: (True, False, False, False, False, False),
    CANCELLED: (True, False, False, False, False, False),
    EXPIRED: (True, False, False, False, False, False),
}

# Each API move: the status it leads to, and how to attempt it on a job. "expire" is the
# sweep (`expire`) run after the job's start deadline was moved into the past (`PREPARE`).
Action = Callable[[Either, Job], Awaitable[Any]]
ACTIONS: dict[str, tuple[Status, Action]] = {
    "claim": (PROCESSING, lambda q, j: q.claim("w2")),
    "complete": (COMPLETED, lambda q, j: q.complete(j, {"ok": 1})),
    "fail": (FAILED, lambda q, j: q.fail(j, "no", retry=False)),
    "fail-and-retry": (PENDING, lambda q, j: q.fail(j, "again", retry=True)),
    "release": (PENDING, lambda q, j: q.release(j)),
    "cancel": (CANCELLED, lambda q, j: q.cancel(j.id)),
    "retry": (PENDING, lambda q, j: q.retry(j.id)),
    "expire": (EXPIRED, lambda q, j: q.expire()),
}
# Where each action may start.
SOURCES: dict[str, set[Status]] = {
    "claim": {PENDING},
    "complete": {PROCESSING},
    "fail": {PROCESSING},
    "fail-and-retry": {PROCESSING},
    "release": {PROCESSING},
    "cancel": {PENDING, PROCESSING},
    "retry": {FAILED, CANCELLED, EXPIRED},
    "expire": {PENDING},
}


def expected(source: Status, target: Status) -> bool:
    return EXPECTED[source][COLUMNS.index(target)]


def test_the_expected_table_names_every_status() -> None:
    assert set(COLUMNS) == set(EXPECTED) == set(Status) == set(MOVES)


@pytest.mark.parametrize("source", list(Status))
@pytest.mark.parametrize("target", list(Status))
def test_the_state_machine_allows_exactly_the_expected_moves(
    source: Status, target: Status
) -> None:
    allowed = expected(source, target)
    assert (target in MOVES[source]) is allowed
    assert can_move(source, target) is allowed
    assert (source in sources_of(target)) is allowed
    if allowed:
        check_move(source, target)
    else:
        with pytest.raises(InvalidTransition, match=f"from {source} to {target}"):
            check_move(source, target)


def test_final_statuses_have_no_way_out_but_retry() -> None:
    assert {COMPLETED, FAILED, CANCELLED, EXPIRED} == FINAL_STATUSES
    assert [s.is_final for s in COLUMNS] == [False, False, True, True, True, True]
    assert MOVES[COMPLETED] == frozenset()
    assert MOVES[FAILED] == MOVES[CANCELLED] == MOVES[EXPIRED] == {PENDING}


def test_the_api_actions_make_every_expected_move_and_no_other() -> None:
    """The actions tried below cover the expected table, so the behavioural test tries
    every allowed move (and every refused one) through the API."""
    made = {(source, target) for name, (target, _) in ACTIONS.items() for source in SOURCES[name]}
    assert made == {(s, t) for s in Status for t in Status if expected(s, t)}


def _past_deadline(raw_sql: Callable[..., Any], table: str, q: Either, job: Job) -> None:
    """Move ``job``'s start deadline an hour into the past, as another client could."""
    key = job.id if q.dialect == "postgresql" else job.id.hex
    past = "now() - interval '1 hour'" if q.dialect == "postgresql" else "'2000-01-01 00:00:00'"
    raw_sql(f"UPDATE {table} SET start_by = {past} WHERE id = :id", id=key)


async def _job_in(q: Either, status: Status, past_deadline: Callable[[Job], None]) -> Job:
    # Every job has a deadline ahead, which "expire" moves into the past.
    job: Job = await q.enqueue("image", {"for": status.value}, max_attempts=5, expires_in=3600)
    if status is Status.PENDING:
        return job
    if status is Status.EXPIRED:
        past_deadline(job)  # the only way in: the sweep, once the deadline has passed
        (expired,) = [j for j in await q.expire() if j.id == job.id]
        return expired  # type: ignore[no-any-return]
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
async def test_every_api_move_from_every_status(
    q: Either, source: Status, raw_sql: Callable[..., Any], migrated: tuple[str, str]
) -> None:
    def past_deadline(job: Job) -> None:
        _past_deadline(raw_sql, migrated[1], q, job)

    for name, (target, attempt) in ACTIONS.items():
        job = await _job_in(q, source, past_deadline)
        if name == "expire":
            past_deadline(job)
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
        if name in ("claim", "expire"):
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
