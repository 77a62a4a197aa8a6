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
    MAX_LIMIT,
    MAX_NAME,
    MAX_PRIORITY,
    MAX_PROGRESS_MESSAGE,
    MAX_RATE_PERIOD,
    MAX_REMOTE_TASK_ID,
    MAX_RESULT_URL,
    MAX_TEXT,
    MAX_TURN,
)
from jobqueue.sql.table import bounds, jobs_table, limit_rules, limits_table

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
    TextBound("limit_key", "limit_key", MAX_NAME, lambda q, v: q.enqueue("image", {}, limit_key=v)),
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


def test_a_turn_is_a_finite_place_in_the_line(queue: JobQueue, raw_sql: Raw) -> None:
    """The library computes every turn (`jobqueue.sql.fair`); another client may store one
    too, within the same bounds, and never an infinity (or NaN on PostgreSQL), which would
    put a job before or after every other for good."""
    t = queue.table_name
    for value in (MAX_TURN, -MAX_TURN):  # in a line of their own
        raw_sql(f"INSERT INTO {t} (queue, turn) VALUES ('psql', :v)", v=value)
    beyond: list[Any] = [MAX_TURN * 2, -MAX_TURN * 2, float("inf"), float("-inf")]
    if queue.is_postgres:  # SQLite stores a NaN as NULL: not in the line, not out of bounds
        beyond.append(float("nan"))
    for value in beyond:
        with _refused_by("turn", t):
            raw_sql(f"INSERT INTO {t} (turn) VALUES (:v)", v=value)
    job = queue.enqueue("image", {})
    assert job.turn is not None and -MAX_TURN <= job.turn <= MAX_TURN
    assert len(queue.list()) == 3


@dataclass(frozen=True)
class LimitBound:
    constraint: str  # <table>_limits_<constraint>_check
    scope: str
    at_limit: dict[str, Any]  # stored by the library (set_limit) and by psql
    beyond: list[dict[str, Any]]  # refused by both


LIMIT_BOUNDS = [
    LimitBound(
        "cap",
        "key",
        {"max_running": MAX_LIMIT},
        [{"max_running": MAX_LIMIT + 1}, {"max_running": 0}],
    ),
    LimitBound(
        "owncap",
        "key",
        {"max_running_per_owner": MAX_LIMIT},
        [{"max_running_per_owner": MAX_LIMIT + 1}, {"max_running_per_owner": 0}],
    ),
    LimitBound(
        "rate",
        "key",
        {"rate": MAX_LIMIT, "per_seconds": MAX_RATE_PERIOD},
        [
            {"rate": MAX_LIMIT + 1, "per_seconds": 1.0},
            {"rate": 1, "per_seconds": MAX_RATE_PERIOD * 2},
            {"rate": 1, "per_seconds": 0.0},
            {"rate": 5, "per_seconds": None},  # a rate needs its period
            {"rate": None, "per_seconds": 5.0},
        ],
    ),
    LimitBound("weight", "owner", {"weight": 1000.0}, [{"weight": 1000.5}, {"weight": 0.0}]),
]


def _raw_limit(raw: Raw, table: str, values: dict[str, Any], scope: str = "key") -> None:
    """Store a limits row as psql would."""
    row = {"scope": scope, "name": f"psql-{len(raw(f'SELECT 1 FROM {table}'))}", **values}
    columns = ", ".join(row)
    raw(f"INSERT INTO {table} ({columns}) VALUES ({', '.join(f':{k}' for k in row)})", **row)


@pytest.mark.parametrize("bound", LIMIT_BOUNDS, ids=lambda b: b.constraint)
def test_limit_settings_agree(bound: LimitBound, queue: JobQueue, raw_sql: Raw) -> None:
    limits = f"{queue.table_name}_limits"
    settings = {("per" if k == "per_seconds" else k): v for k, v in bound.at_limit.items()}
    stored = queue.set_limit("lib", scope=bound.scope, **settings)
    assert {k: getattr(stored, k) for k in bound.at_limit} == bound.at_limit
    _raw_limit(raw_sql, limits, bound.at_limit, bound.scope)
    for values in bound.beyond:
        settings = {("per" if k == "per_seconds" else k): v for k, v in values.items()}
        with pytest.raises(PayloadError):
            queue.set_limit("lib-beyond", scope=bound.scope, **settings)
        with _refused_by(bound.constraint, limits):
            _raw_limit(raw_sql, limits, values, bound.scope)
    assert len(queue.list_limits(counts=False)) == 2


def test_a_limits_row_names_a_scope_and_a_name(queue: JobQueue, raw_sql: Raw) -> None:
    limits = f"{queue.table_name}_limits"
    assert queue.set_limit("o" * MAX_TEXT, scope="owner", weight=2).name == "o" * MAX_TEXT
    for scope, name in (("everything", "x"), ("key", ""), ("owner", "o" * (MAX_TEXT + 1))):
        with pytest.raises(PayloadError):
            queue.set_limit(name, scope=scope, max_running=1)
        with _refused_by("scope" if scope == "everything" else "name", limits):
            raw_sql(f"INSERT INTO {limits} (scope, name) VALUES (:s, :n)", s=scope, n=name)
    assert len(queue.list_limits(counts=False)) == 1


def test_a_limits_rows_times_are_real_points_in_time(queue: JobQueue, raw_sql: Raw) -> None:
    limits = f"{queue.table_name}_limits"
    paused = queue.pause("q", duration=60, reason="maintenance")
    assert paused.paused and paused.paused_until is not None
    unreadable = ("infinity", "-infinity") if queue.is_postgres else ("soon", "", "2024-13-45")
    for value in unreadable:
        for column in ("paused_at", "paused_until", "updated_at"):
            with _refused_by("times", limits):
                _raw_limit(raw_sql, limits, {column: value})
    assert [limit.name for limit in queue.list_limits(counts=False)] == ["q"]


def test_every_constraint_is_checked_here() -> None:
    """A new bound must come with its agreement test above."""
    tested = {b.constraint for b in TEXT_BOUNDS} | {
        "error",
        "priority",
        "attempts_left",
        "times",
        "turn",
        # tests/costs/test_costs.py: cost and reserved (the same `MoneyBounds`), cost_unit.
        "cost",
        "cost_unit",
        "reserved",
        # tests/observability/test_tracing.py: the longest trace context stored.
        "trace",
    }
    assert set(bounds(jobs_table())) == tested
    limit_tested = {b.constraint for b in LIMIT_BOUNDS} | {"scope", "name", "times"}
    assert set(limit_rules(limits_table())) == limit_tested
