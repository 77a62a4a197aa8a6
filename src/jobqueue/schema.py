"""The jobs table, the statuses, the allowed moves between them, and the `Job` record.

This module is the spec of the queue: read it first. Everything else (statements, queues,
workers, the web API) refers to these names instead of repeating them.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    ColumnElement,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
    and_,
    func,
    literal_column,
    text,
)

from .dialects import DbNow, Finite, NewJobId, UTCDateTime, json_type
from .errors import ConfigurationError, InvalidTransition

DEFAULT_TABLE = "generation_jobs"
DEFAULT_QUEUE = "default"
DEFAULT_KIND = "image"
DEFAULT_MAX_ATTEMPTS = 3

# What a job may hold. The library refuses a value outside these bounds with `PayloadError`
# before it writes (`operations`), and the table's check constraints refuse it from every
# other client (migration 0003); tests/test_bounds.py checks that the two agree.
MAX_NAME = 200  # kind, queue
MAX_TEXT = 255  # owner_id, idempotency_key, locked_by (the worker's id)
MAX_PRIORITY = 1_000_000
MAX_ATTEMPTS_LIMIT = 1000  # attempts a job may have left: max_attempts - attempts
MAX_PROGRESS_MESSAGE = 1000
MAX_REMOTE_TASK_ID = 1000
MAX_RESULT_URL = 8192
MAX_ERROR = 10_000  # a failed attempt's message, cut to this many characters

#: The columns holding JSON (``jsonb`` on PostgreSQL, text on SQLite).
JSON_COLUMNS = ("payload", "result", "errors")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class Status(StrEnum):
    """Where a job is in its life. Stored as plain text so other clients can read it."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES: frozenset[Status] = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})

#: Every allowed move, and only those. The statements module derives its WHERE clauses
#: from this mapping (``sources_of``), so a move not listed here cannot happen in SQL either.
MOVES: Mapping[Status, frozenset[Status]] = {
    # claim; cancel before it started
    Status.PENDING: frozenset({Status.PROCESSING, Status.CANCELLED}),
    # finish; fail for good; retry, release, or reap back to the queue; cancel while running
    Status.PROCESSING: frozenset(
        {Status.COMPLETED, Status.FAILED, Status.PENDING, Status.CANCELLED}
    ),
    # an operator's `retry`
    Status.FAILED: frozenset({Status.PENDING}),
    Status.CANCELLED: frozenset({Status.PENDING}),
    Status.COMPLETED: frozenset(),
}


def can_move(source: Status, target: Status) -> bool:
    return target in MOVES[source]


def sources_of(target: Status) -> tuple[Status, ...]:
    """The statuses from which a job may move to ``target`` (in a stable order)."""
    return tuple(s for s in Status if target in MOVES[s])


def check_move(source: Status, target: Status, job_id: object = None) -> None:
    """Raise `InvalidTransition` unless ``source -> target`` is an allowed move."""
    if not can_move(source, target):
        allowed = ", ".join(sorted(MOVES[source])) or "none: it is final"
        raise InvalidTransition(
            f"job {job_id} cannot move from {source} to {target} (allowed from {source}: {allowed})"
        )


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Accept only plain SQL identifiers, so a table or schema name can never carry SQL."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(
            f"invalid {what} {name!r}",
            hint="use letters, digits and underscores only, starting with a letter or _",
        )
    return name


#: Names derived from the table name (the longest is Alembic's ``<table>_alembic_version_pkc``)
#: must stay within PostgreSQL's 63 characters, or migrating fails half-way.
TABLE_NAME_MAX_LENGTH = 63 - len("_alembic_version_pkc")


def validate_table_name(name: str) -> str:
    """A valid identifier short enough to leave room for the names derived from it."""
    validate_identifier(name, "table name")
    if len(name) > TABLE_NAME_MAX_LENGTH:
        raise ConfigurationError(
            f"table name {name!r} is longer than {TABLE_NAME_MAX_LENGTH} characters",
            hint="the indexes and version table are named after it and must fit in 63",
        )
    return name


def jobs_table(
    name: str = DEFAULT_TABLE,
    schema: str | None = None,
    metadata: MetaData | None = None,
) -> Table:
    """Build the `Table` for the jobs table called ``name`` (in ``schema``).

    Every column has a server default, because other clients (a web front end writing
    through Supabase, a psql session) insert rows too and must not need to know them.
    """
    validate_table_name(name)
    if schema is not None:
        validate_identifier(schema, "schema name")
    md = metadata if metadata is not None else MetaData()
    t = Table(
        name,
        md,
        Column("id", Uuid(), primary_key=True, server_default=NewJobId()),
        Column("queue", String(200), nullable=False, server_default=DEFAULT_QUEUE),
        Column("kind", String(200), nullable=False, server_default=DEFAULT_KIND),
        Column("status", String(20), nullable=False, server_default=Status.PENDING.value),
        Column("payload", json_type(), nullable=False, server_default=text("'{}'")),
        Column("result", json_type()),
        Column("result_url", Text()),
        Column("error", Text()),
        Column("errors", json_type(), nullable=False, server_default=text("'[]'")),
        Column("progress", SmallInteger(), nullable=False, server_default=text("0")),
        Column("progress_message", Text()),
        Column("priority", Integer(), nullable=False, server_default=text("0")),
        Column("attempts", Integer(), nullable=False, server_default=text("0")),
        Column(
            "max_attempts",
            Integer(),
            nullable=False,
            server_default=text(str(DEFAULT_MAX_ATTEMPTS)),
        ),
        Column("run_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        Column("locked_by", Text()),
        Column("lease_expires_at", UTCDateTime()),
        Column("remote_task_id", Text()),
        Column("owner_id", Text()),
        Column("idempotency_key", Text()),
        Column("created_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        Column("started_at", UTCDateTime()),
        Column("completed_at", UTCDateTime()),
        Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')",
            name=f"{name}_status_check",
        ),
        CheckConstraint("progress BETWEEN 0 AND 100", name=f"{name}_progress_check"),
        CheckConstraint("attempts >= 0 AND max_attempts >= 1", name=f"{name}_attempts_check"),
        schema=schema,
    )
    for suffix, bound in bounds(t).items():
        t.append_constraint(CheckConstraint(bound, name=f"{name}_{suffix}_check"))
    pending = t.c.status == text("'pending'")
    Index(
        f"{name}_claim_idx",
        t.c.queue,
        t.c.priority.desc(),
        t.c.run_at,
        t.c.id,
        postgresql_where=pending,
        sqlite_where=pending,
    )
    processing = t.c.status == text("'processing'")
    Index(
        f"{name}_lease_idx",
        t.c.lease_expires_at,
        postgresql_where=processing,
        sqlite_where=processing,
    )
    # Only owned jobs: unowned ones are never listed by owner (migration 0002).
    owned = t.c.owner_id.isnot(None)
    Index(
        f"{name}_owner_idx",
        t.c.owner_id,
        t.c.created_at.desc(),
        postgresql_where=owned,
        sqlite_where=owned,
    )
    Index(f"{name}_created_idx", t.c.created_at)
    # A key is unique per queue and owner, so two owners never meet through one; jobs
    # without an owner share the queue's keys among themselves (migration 0003).
    has_key = t.c.idempotency_key.isnot(None)
    Index(
        f"{name}_idempotency_idx",
        *idempotency_scope(t),
        unique=True,
        postgresql_where=has_key,
        sqlite_where=has_key,
    )
    return t


def owner_scope(t: Table) -> ColumnElement[str]:
    """The owner as the idempotency index holds it: ``''`` for jobs without one.

    A plain unique index treats NULLs as distinct, so without this every unowned job could
    reuse a key. No owner is ``''`` (the library refuses blank owners, and so does
    ``<table>_owner_check``), so the two never mix.
    """
    return func.coalesce(t.c.owner_id, literal_column("''"))


def idempotency_scope(t: Table) -> tuple[ColumnElement[Any], ...]:
    """The columns (and expression) an idempotency key is unique within: one index and
    the ON CONFLICT target that infers it (`statements.Statements.insert_many`)."""
    return (t.c.queue, owner_scope(t), t.c.idempotency_key)


def bounds(t: Table) -> dict[str, ColumnElement[bool]]:
    """The check constraints that keep every column within the library's own limits, by
    name (``<table>_<name>_check``).

    A NULL passes a check constraint, so the optional columns are bounded only when set.
    A payload has no size bound here: ``max_payload_bytes`` is each queue's to raise, and
    a ceiling would refuse what such a queue accepts. Supabase users' inserts are bounded by
    the row-level security policy instead (`jobqueue.rls`).
    """
    c = t.c

    def length(column: Any, low: int, high: int) -> ColumnElement[bool]:
        return func.length(column).between(low, high)

    return {
        "queue": length(c.queue, 1, MAX_NAME),
        "kind": length(c.kind, 1, MAX_NAME),
        "owner": length(c.owner_id, 1, MAX_TEXT),
        "key": length(c.idempotency_key, 1, MAX_TEXT),
        "locked_by": length(c.locked_by, 1, MAX_TEXT),
        "task_id": length(c.remote_task_id, 1, MAX_REMOTE_TASK_ID),
        "message": length(c.progress_message, 0, MAX_PROGRESS_MESSAGE),
        "result_url": length(c.result_url, 1, MAX_RESULT_URL),
        "error": length(c.error, 0, MAX_ERROR),
        "priority": c.priority.between(-MAX_PRIORITY, MAX_PRIORITY),
        # Not max_attempts alone: an operator's `retry` of a job that spent its attempts
        # raises it by one, and may never be refused. What it keeps within bounds is what
        # is left.
        "attempts_left": (c.max_attempts - c.attempts) <= MAX_ATTEMPTS_LIMIT,
        "times": and_(
            *(
                Finite(column)
                for column in (
                    c.run_at,
                    c.created_at,
                    c.updated_at,
                    c.started_at,
                    c.lease_expires_at,
                    c.completed_at,
                )
            )
        ),
    }


#: What a job's owner may read of it: through Supabase (the ``select`` grant of
#: `jobqueue.rls`) and through the web API. Left out: the worker's internals (``locked_by``
#: names a host, ``lease_expires_at``, ``remote_task_id`` is the provider's handle on the
#: task) and the raw ``error`` and ``errors`` history, which may hold exception text, host
#: and worker names. The web API derives a user-facing error from ``error`` itself.
OWNER_COLUMNS: tuple[str, ...] = (
    "id",
    "queue",
    "kind",
    "status",
    "payload",
    "result",
    "result_url",
    "progress",
    "progress_message",
    "priority",
    "attempts",
    "max_attempts",
    "run_at",
    "owner_id",
    "idempotency_key",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
)


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one row of the jobs table.

    ``attempts`` and ``started_at`` are the fencing token: a worker holds the job only
    while the row still has the ``attempts`` and ``started_at`` it was claimed with and is
    ``processing`` (a release gives the attempt back, so only ``started_at`` tells its
    claim from the next one).

    ``unreadable`` says why part of a row written by another client could not be read
    (``"payload could not be decoded: …"``); that value reads as None (``errors`` as
    ``[]``). A worker fails such a job at once, without running it.
    """

    id: uuid.UUID
    queue: str
    kind: str
    status: Status
    payload: Any
    result: Any
    result_url: str | None
    error: str | None
    errors: list[dict[str, Any]]
    progress: int
    progress_message: str | None
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    locked_by: str | None
    lease_expires_at: datetime | None
    remote_task_id: str | None
    owner_id: str | None
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    unreadable: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        """The job a row of the table holds (its JSON columns decoded)."""
        return cls.from_values(dict(row))

    @classmethod
    def from_values(cls, values: dict[str, Any], unreadable: str | None = None) -> Job:
        """`from_row` taking over ``values`` (a fresh dict it may change)."""
        # Called for every row a claim or a listing returns, so the common case (exactly
        # the table's columns) skips sorting out extra columns.
        extra: dict[str, Any] = {}
        if values.keys() != _JOB_FIELD_SET:
            extra = {k: values.pop(k) for k in [k for k in values if k not in _JOB_FIELD_SET]}
        status = values["status"]
        values["status"] = _STATUS_OF.get(status) or Status(status)
        errors = values.get("errors")
        values["errors"] = read_errors(errors) if errors else []
        job_id = values["id"]
        if not isinstance(job_id, uuid.UUID):
            values["id"] = uuid.UUID(str(job_id))
        return cls(**values, extra=extra, unreadable=unreadable)

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def duration(self) -> float | None:
        """Seconds from creation to the final status (what the statistics average)."""
        if self.completed_at is None:
            return None
        return (self.completed_at - self.created_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (ids and times as strings) for APIs and the CLI; the table's
        columns, and ``unreadable`` when it is set."""
        out: dict[str, Any] = {}
        for name in _JOB_FIELDS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, Status):
                value = value.value
            out[name] = value
        if self.unreadable is not None:
            out["unreadable"] = self.unreadable
        return out


def read_errors(errors: Any) -> list[Any]:
    """A job's ``errors`` history with every ``at`` in the one format all backends write
    (`error_time`), whatever wrote the row."""
    out = list(errors)
    for i, entry in enumerate(out):
        if isinstance(entry, dict) and "at" in entry:
            at = error_time(entry["at"])
            if at is not entry["at"]:
                out[i] = {**entry, "at": at}
    return out


def error_time(value: Any) -> Any:
    """An ``errors[].at`` as ISO 8601 UTC text, ``2026-11-29T07:05:48.123456+00:00``.

    Both backends write that now (`dialects.DbNowText`). Rows written before read the
    same: SQLite's clock text (``2026-11-29 07:05:48.123000``, UTC) and PostgreSQL's JSON
    time in the session's time zone (``…+01:00``). Text that is no time stays as it is.
    """
    written_now = isinstance(value, str) and len(value) == 32 and value[26:] == "+00:00"
    if not isinstance(value, str) or (written_now and value[10] == "T"):
        return value
    try:
        at = datetime.fromisoformat(value)
        if at.tzinfo is None:  # SQLite's clock: UTC
            at = at.replace(tzinfo=UTC)
        return at.astimezone(UTC).isoformat(timespec="microseconds")
    except (ValueError, OverflowError):  # no time, or none that exists in UTC
        return value


#: The table's columns, in `Job`'s field order.
_JOB_FIELDS = tuple(f for f in Job.__dataclass_fields__ if f not in ("extra", "unreadable"))
_JOB_FIELD_SET = frozenset(_JOB_FIELDS)
_STATUS_OF = {s.value: s for s in Status}
