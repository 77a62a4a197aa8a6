"""The table's check constraints and the library's own validation agree (SQLite and
PostgreSQL): a value at a limit is stored by both, one past it is refused by both — by the
library with `PayloadError` before it writes anything, and by the database for any other
client (psql, a Supabase client, a worker role)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc

from jobqueue import JobQueue, PayloadError, Status
from jobqueue.models import (
    MAX_ATTEMPTS_LIMIT,
    MAX_ERROR,
    MAX_NAME,
    MAX_PRIORITY,
    MAX_PROGRESS_MESSAGE,
    MAX_REMOTE_TASK_ID,
    MAX_RESULT_URL,
    MAX_TEXT,
)
from jobqueue.sql.table import bounds, jobs_table

Raw = Callable[..., list[Any]]


def _held(q: JobQueue) -> Any:
    q.enqueue("image", {})
    (job,) = q.claim("w")
    return job


@dataclass(frozen=True)
class TextBound:
    constraint: str  # <table>_<constraint>_check
    column: str
    limit: int
    write: Callable[[JobQueue, str], object]  # the library's way to store the value
    blank_allowed: bool = False


TEXT_BOUNDS = [
    TextBound("kind", "kind", MAX_NAME, lambda q, v: q.enqueue(v, {})),
    TextBound("queue", "queue", MAX_NAME, lambda q, v: q.enqueue("image", {}, queue=v)),
    TextBound("owner", "owner_id", MAX_TEXT, lambda q, v: q.enqueue("image", {}, owner_id=v)),
    TextBound(
        "key", "idempotency_key", MAX_TEXT, lambda q, v: q.enqueue("image", {}, idempotency_key=v)
    ),
    TextBound("locked_by", "locked_by", MAX_TEXT, lambda q, v: q.enqueue_many([{}]) + q.claim(v)),
    TextBound(
        "task_id",
        "remote_task_id",
        MAX_REMOTE_TASK_ID,
        lambda q, v: q.save_remote_task_id(_held(q), v),
    ),
    TextBound(
        "message",
        "progress_message",
        MAX_PROGRESS_MESSAGE,
        lambda q, v: q.set_progress(_held(q), 50, v),
        blank_allowed=True,
    ),
    TextBound(
        "result_url", "result_url", MAX_RESULT_URL, lambda q, v: q.complete(_held(q), None, v)
    ),
]


def _raw_write(raw: Raw, table: str, column: str, value: Any) -> None:
    """Store ``value`` in ``column`` of a new row, as psql would."""
    raw(f"INSERT INTO {table} ({column}) VALUES (:v)", v=value)


def _refused_by(constraint: str, table: str) -> Any:
    # PostgreSQL's varchar(200) refuses a long kind or queue even before the check does.
    return pytest.raises(
        (sa_exc.IntegrityError, sa_exc.DataError),
        match=f"{table}_{constraint}_check|value too long for type character varying",
    )


@pytest.mark.parametrize("bound", TEXT_BOUNDS, ids=lambda b: b.column)
def test_text_limits_agree(bound: TextBound, queue: JobQueue, raw_sql: Raw) -> None:
    t = queue.table_name

    def stored() -> list[int]:
        column = f"{bound.column} FROM {t} WHERE {bound.column} IS NOT NULL"
        return [len(value) for (value,) in raw_sql(f"SELECT {column}")]

    bound.write(queue, "x" * bound.limit)
    assert stored() == [bound.limit]
    with pytest.raises(PayloadError, match=f"{bound.limit}"):
        bound.write(queue, "x" * (bound.limit + 1))
    assert stored() == [bound.limit]
    with _refused_by(bound.constraint, t):
        _raw_write(raw_sql, t, bound.column, "y" * (bound.limit + 1))
    if not bound.blank_allowed:
        with pytest.raises(PayloadError):
            bound.write(queue, "")
        with _refused_by(bound.constraint, t):
            _raw_write(raw_sql, t, bound.column, "")
    assert stored() == [bound.limit]


def test_a_failure_message_is_cut_to_the_limit_the_table_holds(
    queue: JobQueue, raw_sql: Raw
) -> None:
    failed = queue.fail(_held(queue), "e" * (MAX_ERROR + 5000), retry=False)
    assert failed.status is Status.FAILED and len(failed.error or "") == MAX_ERROR
    t = queue.table_name
    with _refused_by("error", t):
        _raw_write(raw_sql, t, "error", "e" * (MAX_ERROR + 1))


def test_priority_limits_agree(queue: JobQueue, raw_sql: Raw) -> None:
    t = queue.table_name
    for value in (MAX_PRIORITY, -MAX_PRIORITY):
        assert queue.enqueue("image", {}, priority=value).priority == value
    for value in (MAX_PRIORITY + 1, -MAX_PRIORITY - 1):
        with pytest.raises(PayloadError, match="priority"):
            queue.enqueue("image", {}, priority=value)
        with _refused_by("priority", t):
            raw_sql(f"INSERT INTO {t} (priority) VALUES (:v)", v=value)
    assert len(queue.list()) == 2


def test_the_attempts_a_job_has_left_agree(queue: JobQueue, raw_sql: Raw) -> None:
    t = queue.table_name
    job = queue.enqueue("image", {}, max_attempts=MAX_ATTEMPTS_LIMIT)
    with pytest.raises(PayloadError, match="max_attempts"):
        queue.enqueue("image", {}, max_attempts=MAX_ATTEMPTS_LIMIT + 1)
    with _refused_by("attempts_left", t):
        raw_sql(f"INSERT INTO {t} (max_attempts) VALUES (:v)", v=MAX_ATTEMPTS_LIMIT + 1)
    # A job handed back again and again, or retried, is never refused: `release` gives the
    # attempt back and `retry` adds one only when they are spent; what is left stays within
    # the bound.
    for _ in range(3):
        (held,) = queue.claim("w")
        job = queue.release(held)
    assert (job.max_attempts, job.attempts) == (MAX_ATTEMPTS_LIMIT, 0)
    (held,) = queue.claim("w")
    failed = queue.fail(held, "no", retry=False)
    assert queue.retry(failed.id).max_attempts == MAX_ATTEMPTS_LIMIT


def test_times_are_real_points_in_time(queue: JobQueue, raw_sql: Raw) -> None:
    t = queue.table_name
    far = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
    assert queue.enqueue("image", {}, run_at=far).run_at == far
    unreadable = ("infinity", "-infinity") if queue.is_postgres else ("soon", "", "2024-13-45")
    for value in unreadable:
        for column in ("run_at", "created_at", "started_at", "completed_at", "lease_expires_at"):
            with _refused_by("times", t):
                _raw_write(raw_sql, t, column, value)
    assert len(queue.list()) == 1


def test_every_constraint_is_checked_here() -> None:
    """A new bound must come with its agreement test above."""
    tested = {b.constraint for b in TEXT_BOUNDS} | {"error", "priority", "attempts_left", "times"}
    assert set(bounds(jobs_table())) == tested
