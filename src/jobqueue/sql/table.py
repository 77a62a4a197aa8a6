"""The tables: the jobs table with its indexes and bounds, the live-workers table, and the
rules for the names derived from the jobs table's name.

Every column has a server default, because other clients (a web front end writing
through Supabase, a psql session) insert rows too and must not need to know them. What
such a row may hold is bounded by check constraints (`bounds`) that repeat the library's
own limits (`jobqueue.models`).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ColumnElement,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
    and_,
    func,
    literal_column,
    or_,
    text,
    true,
)

from ..errors import ConfigurationError
from ..models import (
    DEFAULT_KIND,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    DEFAULT_TABLE,
    MAX_ATTEMPTS_LIMIT,
    MAX_COST_UNIT,
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
    Status,
)
from ..tracing import MAX_TRACE_CONTEXT
from .dialect import DbNow, Finite, Money, MoneyBounds, NewJobId, UTCDateTime, json_type

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


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


def version_table(table: str) -> str:
    """Alembic's version table of the jobs table ``table`` (never the host's
    ``alembic_version``): the longest name derived from ``table``."""
    return f"{table}_alembic_version"


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
        # The job's place in the fair-share line (`jobqueue.sql.fair`): NULL while it waits
        # for a time (scheduled, backing off, held back) and is not yet in the line.
        Column("turn", Float()),
        # The name whose limits govern the job besides its queue's; NULL means its kind.
        Column("limit_key", String(200)),
        Column("created_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        Column("started_at", UTCDateTime()),
        Column("completed_at", UTCDateTime()),
        Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        # What the job cost (every attempt's reported cost added up) and in what unit, and
        # what its owner's budget reserved for it at enqueue (migration 0007).
        Column("cost", Money()),
        Column("cost_unit", String(MAX_COST_UNIT)),
        Column("reserved", Money()),
        # The start deadline: a job not claimed by then is expired instead (migration 0008).
        # No bound: ``infinity`` (PostgreSQL) reads as no deadline at all, ``-infinity`` as
        # one long past, and both compare as such in SQL.
        Column("start_by", UTCDateTime()),
        # The trace the job was enqueued in, as JSON text (`jobqueue.tracing`; migration 0010).
        Column("trace_context", Text()),
        CheckConstraint(status_check(), name=f"{name}_status_check"),
        CheckConstraint("progress BETWEEN 0 AND 100", name=f"{name}_progress_check"),
        CheckConstraint("attempts >= 0 AND max_attempts >= 1", name=f"{name}_attempts_check"),
        schema=schema,
    )
    for suffix, bound in bounds(t).items():
        t.append_constraint(CheckConstraint(bound, name=f"{name}_{suffix}_check"))
    in_line = and_(t.c.status == text("'pending'"), t.c.turn.isnot(None))
    Index(
        f"{name}_claim_idx",
        t.c.queue,
        t.c.priority.desc(),
        t.c.turn,
        t.c.id,
        postgresql_where=in_line,
        sqlite_where=in_line,
    )
    # Each owner's last place in the line: where its next job goes (migration 0005).
    Index(
        f"{name}_turn_idx",
        t.c.queue,
        t.c.owner_id,
        t.c.turn,
        postgresql_where=in_line,
        sqlite_where=in_line,
    )
    # The jobs waiting to enter the line, by the time they may.
    waiting = and_(t.c.status == text("'pending'"), t.c.turn.is_(None))
    Index(f"{name}_entry_idx", t.c.run_at, postgresql_where=waiting, sqlite_where=waiting)
    # Each kind's latest completed runs: what a job's expected run time is taken from
    # (`jobqueue.sql.position`; migration 0006).
    completed = t.c.status == text("'completed'")
    Index(
        f"{name}_done_idx",
        t.c.kind,
        t.c.completed_at,
        postgresql_where=completed,
        sqlite_where=completed,
    )
    # The pending jobs with a deadline, by it: what the expiry sweep reads (migration 0008).
    # Partial, so a job without a deadline costs it nothing: no entry when it is inserted.
    deadline = and_(t.c.status == text("'pending'"), t.c.start_by.isnot(None))
    Index(
        f"{name}_deadline_idx",
        t.c.start_by,
        postgresql_where=deadline,
        sqlite_where=deadline,
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


def status_check() -> str:
    """The condition of ``<table>_status_check``: every status of the state machine
    (`jobqueue.models.Status`), in its order."""
    return "status IN (" + ", ".join(f"'{s.value}'" for s in Status) + ")"


def owner_scope(t: Table) -> ColumnElement[str]:
    """The owner as the idempotency index holds it: ``''`` for jobs without one.

    A plain unique index treats NULLs as distinct, so without this every unowned job could
    reuse a key. No owner is ``''`` (the library refuses blank owners, and so does
    ``<table>_owner_check``), so the two never mix.
    """
    return func.coalesce(t.c.owner_id, literal_column("''"))


def idempotency_scope(t: Table) -> tuple[ColumnElement[Any], ...]:
    """The columns (and expression) an idempotency key is unique within: one index and
    the ON CONFLICT target that infers it (`jobqueue.sql.enqueue`)."""
    return (t.c.queue, owner_scope(t), t.c.idempotency_key)


def bounds(t: Table) -> dict[str, ColumnElement[bool]]:
    """The check constraints that keep every column within the library's own limits, by
    name (``<table>_<name>_check``).

    A NULL passes a check constraint, so the optional columns are bounded only when set.
    A payload has no size bound here: ``max_payload_bytes`` is each queue's to raise, and
    a ceiling would refuse what such a queue accepts. Supabase users' inserts are bounded by
    the row-level security policy instead (`jobqueue.sql.rls`).
    """
    c = t.c

    def length(column: Any, low: int, high: int) -> ColumnElement[bool]:
        return func.length(column).between(low, high)

    return {
        "queue": length(c.queue, 1, MAX_NAME),
        "kind": length(c.kind, 1, MAX_NAME),
        "owner": length(c.owner_id, 1, MAX_TEXT),
        "key": length(c.idempotency_key, 1, MAX_TEXT),
        "limit_key": length(c.limit_key, 1, MAX_NAME),
        "locked_by": length(c.locked_by, 1, MAX_TEXT),
        "task_id": length(c.remote_task_id, 1, MAX_REMOTE_TASK_ID),
        "message": length(c.progress_message, 0, MAX_PROGRESS_MESSAGE),
        "result_url": length(c.result_url, 1, MAX_RESULT_URL),
        "error": length(c.error, 0, MAX_ERROR),
        "priority": c.priority.between(-MAX_PRIORITY, MAX_PRIORITY),
        "cost": MoneyBounds(c.cost),
        "cost_unit": length(c.cost_unit, 1, MAX_COST_UNIT),
        "reserved": MoneyBounds(c.reserved),
        "trace": length(c.trace_context, 1, MAX_TRACE_CONTEXT),
        # Finite: NaN or an infinity would put a job past or before every other for good.
        "turn": c.turn.between(-MAX_TURN, MAX_TURN),
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
#: `jobqueue.sql.rls`) and through the web API. Left out: the worker's internals (``locked_by``
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
    "limit_key",
    "created_at",
    "started_at",
    "completed_at",
    "updated_at",
    "cost",
    "cost_unit",
    "reserved",
    "start_by",
)


# -- the limits --------------------------------------------------------------------------------

LIMITS_SUFFIX = "_limits"

#: What a limits row is about: a queue, a limit key (a job's ``limit_key``, else its kind),
#: or an owner (whose weight in the fair share it holds).
LIMIT_SCOPES = ("queue", "key", "owner")


def limits_table_name(jobs_table_name: str) -> str:
    """The limits table of the jobs table ``jobs_table_name`` (``generation_jobs_limits``)."""
    return f"{jobs_table_name}{LIMITS_SUFFIX}"


def limits_table(
    jobs_table_name: str = DEFAULT_TABLE,
    schema: str | None = None,
    metadata: MetaData | None = None,
) -> Table:
    """The `Table` of the limits every worker enforces (`jobqueue.sql.limits`).

    One row per queue, limit key or owner that has a rule: caps on running jobs (in all,
    and per owner), a rate of starts, a pause, a weight in the fair share. ``starts``
    holds the recent starts a rate is counted over (a JSON array of database times).
    """
    validate_table_name(jobs_table_name)
    if schema is not None:
        validate_identifier(schema, "schema name")
    name = limits_table_name(jobs_table_name)
    t = Table(
        name,
        metadata if metadata is not None else MetaData(),
        Column("scope", String(20), nullable=False),
        Column("name", String(MAX_TEXT), nullable=False),
        Column("max_running", Integer()),
        Column("max_running_per_owner", Integer()),
        Column("rate", Integer()),
        Column("per_seconds", Float()),
        Column("weight", Float()),
        Column("paused_at", UTCDateTime()),
        Column("paused_until", UTCDateTime()),
        Column("pause_reason", Text()),
        Column("starts", json_type(), nullable=False, server_default=text("'[]'")),
        Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        PrimaryKeyConstraint("scope", "name", name=f"{name}_pkey"),
        schema=schema,
    )
    for suffix, rule in limit_rules(t).items():
        t.append_constraint(CheckConstraint(rule, name=f"{name}_{suffix}_check"))
    return t


def limit_rules(t: Table) -> dict[str, ColumnElement[bool]]:
    """The check constraints of the limits table, by name (``<limits>_<name>_check``).

    Each name is at most 6 characters: with the longest jobs table name
    (`TABLE_NAME_MAX_LENGTH`), ``<table>_limits_<name>_check`` then just fits PostgreSQL's
    63; SQLAlchemy refuses a longer one when it renders the table's DDL.
    """
    c = t.c
    return {
        "scope": c.scope.in_(LIMIT_SCOPES),
        "name": func.length(c.name).between(1, MAX_TEXT),
        "cap": c.max_running.between(1, MAX_LIMIT),
        "owncap": c.max_running_per_owner.between(1, MAX_LIMIT),
        # A rate is a number of starts per a period: both or neither. The IS NOT NULLs are
        # needed: with one of them NULL, its BETWEEN is NULL, and a check that comes out
        # NULL passes.
        "rate": or_(
            and_(c.rate.is_(None), c.per_seconds.is_(None)),
            and_(
                c.rate.isnot(None),
                c.per_seconds.isnot(None),
                c.rate.between(1, MAX_LIMIT),
                c.per_seconds.between(0.001, MAX_RATE_PERIOD),
            ),
        ),
        "weight": c.weight.between(0.001, 1000),
        "times": and_(*(Finite(col) for col in (c.paused_at, c.paused_until, c.updated_at))),
    }


# -- the live workers --------------------------------------------------------------------------

WORKERS_SUFFIX = "_workers"


def workers_table_name(jobs_table_name: str) -> str:
    """The live-workers table of the jobs table ``jobs_table_name`` (``generation_jobs_workers``).

    Its names fit PostgreSQL's 63 characters for every valid jobs table name: the longest,
    ``<table>_workers_pkey``, is shorter than the version table's constraint that
    `TABLE_NAME_MAX_LENGTH` is measured by.
    """
    return f"{jobs_table_name}{WORKERS_SUFFIX}"


def workers_table(
    jobs_table_name: str = DEFAULT_TABLE,
    schema: str | None = None,
    metadata: MetaData | None = None,
) -> Table:
    """The `Table` of the live workers of the jobs table ``jobs_table_name`` (in ``schema``).

    Each running `Worker` keeps one row here: who it is (id, host, pid), what it serves
    (queues, kinds, concurrency), when it started and when it last beat, all by the
    database clock. A row counts as live until its ``expires_at``.
    """
    validate_table_name(jobs_table_name)
    if schema is not None:
        validate_identifier(schema, "schema name")
    name = workers_table_name(jobs_table_name)
    return Table(
        name,
        metadata if metadata is not None else MetaData(),
        Column("worker_id", Text(), nullable=False),
        Column("host", Text(), nullable=False),
        Column("pid", Integer(), nullable=False),
        # JSON arrays of names; ``kinds`` is NULL for a worker that claims every kind.
        Column("queues", json_type(), nullable=False),
        Column("kinds", json_type()),
        Column("concurrency", Integer(), nullable=False),
        Column("started_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        Column("last_beat_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        Column("expires_at", UTCDateTime(), nullable=False),
        PrimaryKeyConstraint("worker_id", name=f"{name}_pkey"),
        schema=schema,
    )


# -- the budgets -------------------------------------------------------------------------------

BUDGETS_SUFFIX = "_budgets"

#: A budget is an amount per day or per calendar month (UTC), or a prepaid balance that
#: never starts over.
BUDGET_PERIODS = ("day", "month", "balance")


def budgets_table_name(jobs_table_name: str) -> str:
    """The budgets table of the jobs table ``jobs_table_name`` (``generation_jobs_budgets``)."""
    return f"{jobs_table_name}{BUDGETS_SUFFIX}"


def budgets_table(
    jobs_table_name: str = DEFAULT_TABLE,
    schema: str | None = None,
    metadata: MetaData | None = None,
) -> Table:
    """The `Table` of the owners' budgets (`jobqueue.sql.budgets`): one row per owner that
    has one, with its ``amount`` per ``period`` (or as a prepaid balance) and its unit.

    Its check constraints' names are ``<budgets>_<3 letters>_check``: with the longest jobs
    table name they just fit PostgreSQL's 63 characters."""
    validate_table_name(jobs_table_name)
    if schema is not None:
        validate_identifier(schema, "schema name")
    name = budgets_table_name(jobs_table_name)
    t = Table(
        name,
        metadata if metadata is not None else MetaData(),
        Column("owner_id", String(MAX_TEXT), nullable=False),
        Column("amount", Money(), nullable=False),
        Column("period", String(10), nullable=False),
        Column("cost_unit", String(MAX_COST_UNIT)),
        Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        PrimaryKeyConstraint("owner_id", name=f"{name}_pkey"),
        schema=schema,
    )
    c = t.c
    rules: dict[str, ColumnElement[bool]] = {
        "own": func.length(c.owner_id).between(1, MAX_TEXT),
        "amt": MoneyBounds(c.amount),
        "per": c.period.in_(BUDGET_PERIODS),
        "unt": func.length(c.cost_unit).between(1, MAX_COST_UNIT),
    }
    for suffix, rule in rules.items():
        t.append_constraint(CheckConstraint(rule, name=f"{name}_{suffix}_check"))
    return t


# -- the schedules -----------------------------------------------------------------------------

SCHEDULES_SUFFIX = "_schedules"

#: What a schedule does about ticks that passed while no worker ran: one job for the latest
#: of them, or none (`jobqueue.operations.schedules`).
MISSED_POLICIES = ("once", "skip")

#: The shortest and longest interval of an interval schedule, in seconds.
MIN_EVERY = 1.0
MAX_EVERY = 366 * 86400.0

#: The longest cron expression and time zone name stored.
MAX_CRON = 200
MAX_TIMEZONE = 64


def schedules_table_name(jobs_table_name: str) -> str:
    """The schedules table of the jobs table ``jobs_table_name``
    (``generation_jobs_schedules``)."""
    return f"{jobs_table_name}{SCHEDULES_SUFFIX}"


def schedules_table(
    jobs_table_name: str = DEFAULT_TABLE,
    schema: str | None = None,
    metadata: MetaData | None = None,
) -> Table:
    """The `Table` of the periodic jobs (`jobqueue.sql.schedules`): one row per schedule,
    with its timing (a cron expression in a time zone, or an interval), the job each tick
    enqueues, what to do about missed ticks, and ``next_tick``, the tick the schedulers of
    every worker wait for (moved on by exactly one of them per tick).

    Its check constraints' names are ``<schedules>_<3 letters>_check``: with the longest
    jobs table name they just fit PostgreSQL's 63 characters."""
    validate_table_name(jobs_table_name)
    if schema is not None:
        validate_identifier(schema, "schema name")
    name = schedules_table_name(jobs_table_name)
    t = Table(
        name,
        metadata if metadata is not None else MetaData(),
        Column("name", String(MAX_NAME), nullable=False),
        Column("kind", String(MAX_NAME), nullable=False),
        Column("queue", String(MAX_NAME), nullable=False, server_default=DEFAULT_QUEUE),
        Column("payload", json_type(), nullable=False, server_default=text("'{}'")),
        Column("priority", Integer(), nullable=False, server_default=text("0")),
        Column("cron", String(MAX_CRON)),
        Column("every_seconds", Float()),
        Column("timezone", String(MAX_TIMEZONE), nullable=False, server_default="UTC"),
        Column("missed", String(10), nullable=False, server_default="once"),
        Column("enabled", Boolean(), nullable=False, server_default=true()),
        Column("next_tick", UTCDateTime(), nullable=False),
        Column("last_tick", UTCDateTime()),
        Column("created_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        PrimaryKeyConstraint("name", name=f"{name}_pkey"),
        schema=schema,
    )
    c = t.c
    rules: dict[str, ColumnElement[bool]] = {
        "nam": func.length(c.name).between(1, MAX_NAME),
        "knd": func.length(c.kind).between(1, MAX_NAME),
        "que": func.length(c.queue).between(1, MAX_NAME),
        "pri": c.priority.between(-MAX_PRIORITY, MAX_PRIORITY),
        # A cron expression or an interval, never both. The IS NOT NULLs matter: a check
        # that comes out NULL passes.
        "tim": or_(
            and_(c.cron.isnot(None), c.every_seconds.is_(None), func.length(c.cron) >= 1),
            and_(
                c.cron.is_(None),
                c.every_seconds.isnot(None),
                c.every_seconds.between(MIN_EVERY, MAX_EVERY),
            ),
        ),
        "tz": func.length(c.timezone).between(1, MAX_TIMEZONE),
        "mis": c.missed.in_(MISSED_POLICIES),
    }
    for suffix, rule in rules.items():
        t.append_constraint(CheckConstraint(rule, name=f"{name}_{suffix}_check"))
    # What the schedulers read every round: the schedules due, by their next tick.
    Index(f"{name}_due_idx", c.next_tick)
    return t


def companion_table_names(jobs_table_name: str) -> tuple[str, ...]:
    """The tables the migrations make beside the jobs table ``jobs_table_name`` (live
    workers, limits, budgets, schedules): what a tool that hides or drops a jobs table must
    hide or drop with it (besides Alembic's version table)."""
    return (
        workers_table_name(jobs_table_name),
        limits_table_name(jobs_table_name),
        budgets_table_name(jobs_table_name),
        schedules_table_name(jobs_table_name),
    )
