"""Idempotency keys per owner; check constraints that keep every column within bounds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

1. ``<table>_idempotency_idx`` becomes unique on ``(queue, coalesce(owner_id, ''),
   idempotency_key)``: two owners using the same key get two jobs, and nobody learns that
   someone else used a key. Jobs without an owner share one scope per queue, as before
   (a plain unique index treats NULLs as distinct: hence the ``coalesce``). The old index
   was stricter, so every existing row fits the new one.
2. Check constraints bound what any client may store (psql, a Supabase client, a worker
   role): text lengths, priority, the attempts a job has left, and timestamps that are
   real points in time (no ``infinity`` on PostgreSQL; text SQLite's date functions can
   read). The numbers are the library's own limits (`jobqueue.models`), which it checks
   before writing.

Rows already outside the new bounds are kept as they are. A job among them that is still
``pending`` or ``processing`` is failed first, with an error saying why, so that no worker
claims it: any later write to such a row (a claim, a completion) would be refused by the
constraint and take the rest of its statement with it. An operator may correct the row and
``jobqueue retry`` it. On PostgreSQL the constraints are added ``NOT VALID`` and then each
one that no row breaks is validated; on SQLite the table is rebuilt (batch mode) with the
checks ignored while the rows are copied. New writes, and updates of old rows, are checked
from then on either way.

On PostgreSQL the migration holds an exclusive lock on the table while it rebuilds the
index and scans the table (seconds per million rows); on SQLite it copies the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.errors import ConfigurationError
from jobqueue.migrations import TableWork, Target, target
from jobqueue.sql.dialect import DbNow, NewJobId, UTCDateTime, json_type

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="ACCESS EXCLUSIVE while it rebuilds the idempotency index and scans the table to "
    "validate the bounds (seconds per million rows)",
    rewrites=False,
    sqlite_rewrites=True,
)

FAILED_BY_MIGRATION = (
    "failed by migration 0003: this job holds values outside the table's bounds (its check "
    "constraints); correct them and retry the job"
)

TIMES = ("run_at", "created_at", "updated_at", "started_at", "lease_expires_at", "completed_at")


def _finite(dialect: str, column: str) -> str:
    if dialect == "postgresql":
        return f"isfinite({column})"
    return f"({column} IS NULL OR julianday({column}) IS NOT NULL)"


def bounds(dialect: str) -> dict[str, str]:
    """The new check constraints (``<table>_<name>_check``), as this revision adds them."""
    return {
        "queue": "length(queue) BETWEEN 1 AND 200",
        "kind": "length(kind) BETWEEN 1 AND 200",
        "owner": "length(owner_id) BETWEEN 1 AND 255",
        "key": "length(idempotency_key) BETWEEN 1 AND 255",
        "locked_by": "length(locked_by) BETWEEN 1 AND 255",
        "task_id": "length(remote_task_id) BETWEEN 1 AND 1000",
        "message": "length(progress_message) BETWEEN 0 AND 1000",
        "result_url": "length(result_url) BETWEEN 1 AND 8192",
        "error": "length(error) BETWEEN 0 AND 10000",
        "priority": "priority BETWEEN -1000000 AND 1000000",
        "attempts_left": "max_attempts - attempts <= 1000",
        "times": " AND ".join(_finite(dialect, c) for c in TIMES),
    }


def _table(t: Target, *, checked: bool, owner_scoped: bool) -> sa.Table:
    """The whole table, for SQLite's rebuild: as 0002 left it, or as this revision makes it."""
    n = t.name
    checks = [
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')",
            name=f"{n}_status_check",
        ),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name=f"{n}_progress_check"),
        sa.CheckConstraint("attempts >= 0 AND max_attempts >= 1", name=f"{n}_attempts_check"),
    ]
    if checked:
        checks += [
            sa.CheckConstraint(sa.text(expr), name=f"{n}_{name}_check")
            for name, expr in bounds(t.dialect).items()
        ]
    table = sa.Table(
        n,
        sa.MetaData(),
        sa.Column("id", sa.Uuid(), primary_key=True, server_default=NewJobId()),
        sa.Column("queue", sa.String(200), nullable=False, server_default="default"),
        sa.Column("kind", sa.String(200), nullable=False, server_default="image"),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("payload", json_type(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("result", json_type()),
        sa.Column("result_url", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("errors", json_type(), nullable=False, server_default=sa.text("'[]'")),
        sa.Column("progress", sa.SmallInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("progress_message", sa.Text()),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=sa.text("3")),
        sa.Column("run_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        sa.Column("locked_by", sa.Text()),
        sa.Column("lease_expires_at", UTCDateTime()),
        sa.Column("remote_task_id", sa.Text()),
        sa.Column("owner_id", sa.Text()),
        sa.Column("idempotency_key", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        sa.Column("started_at", UTCDateTime()),
        sa.Column("completed_at", UTCDateTime()),
        sa.Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        *checks,
        schema=t.schema,
    )
    c = table.c
    pending = sa.text("status = 'pending'")
    sa.Index(f"{n}_claim_idx", c.queue, c.priority.desc(), c.run_at, c.id, sqlite_where=pending)
    sa.Index(f"{n}_lease_idx", c.lease_expires_at, sqlite_where=sa.text("status = 'processing'"))
    owned = sa.text("owner_id IS NOT NULL")
    sa.Index(f"{n}_owner_idx", c.owner_id, c.created_at.desc(), sqlite_where=owned)
    sa.Index(f"{n}_created_idx", c.created_at)
    scope = [c.queue, sa.text("coalesce(owner_id, '')")] if owner_scoped else [c.queue]
    sa.Index(
        f"{n}_idempotency_idx",
        *scope,
        c.idempotency_key,
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    return table


def _idempotency_index(t: Target, columns: list[str | sa.TextClause]) -> None:
    name = f"{t.name}_idempotency_idx"
    op.drop_index(name, table_name=t.name, schema=t.schema)
    has_key = sa.text("idempotency_key IS NOT NULL")
    op.create_index(
        name,
        t.name,
        columns,
        unique=True,
        schema=t.schema,
        postgresql_where=has_key,
        sqlite_where=has_key,
    )


def _fail_jobs_out_of_bounds(t: Target) -> None:
    within = " AND ".join(f"coalesce(({expr}), true)" for expr in bounds(t.dialect).values())
    message = "'" + FAILED_BY_MIGRATION.replace("'", "''") + "'"
    if t.dialect == "postgresql":
        now = "clock_timestamp()"
        errors = (
            "CASE WHEN jsonb_typeof(errors) = 'array' THEN errors || jsonb_build_array("
            f"jsonb_build_object('attempt', attempts, 'at', {now}, 'error', {message})) "
            "ELSE errors END"
        )
    else:
        now = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
        errors = (
            "CASE WHEN json_valid(errors) AND json_type(errors) = 'array' THEN json_insert("
            f"errors, '$[#]', json_object('attempt', attempts, 'at', {now}, 'error', {message})) "
            "ELSE errors END"
        )
    op.execute(
        f"UPDATE {t.qualified} SET status = 'failed', error = {message}, errors = {errors}, "
        f"lease_expires_at = NULL, completed_at = {now}, updated_at = {now} "
        f"WHERE status IN ('pending', 'processing') AND NOT ({within})"
    )


def _check_sqlite_columns(t: Target, table: sa.Table) -> None:
    """SQLite's rebuild copies the columns jobqueue knows: refuse to drop anyone else's."""
    found = {col["name"] for col in sa.inspect(op.get_bind()).get_columns(t.name, t.schema)}
    extra = sorted(found - set(table.c.keys()))
    if extra:
        raise ConfigurationError(
            f"cannot migrate {t.name}: SQLite must rebuild the table, which would drop the "
            f"columns {', '.join(extra)} that jobqueue did not create",
            hint="move those columns to a table of your own, then run `jobqueue migrate` again",
        )


def _rebuild_sqlite(t: Target, table: sa.Table) -> None:
    _check_sqlite_columns(t, table)
    # Rows already outside the new bounds are copied as they are (see the module's text).
    # The setting belongs to the connection, which outlives this migration in its pool.
    op.execute("PRAGMA ignore_check_constraints = ON")
    try:
        with op.batch_alter_table(t.name, schema=t.schema, recreate="always", copy_from=table):
            pass
    finally:
        op.execute("PRAGMA ignore_check_constraints = OFF")


def upgrade() -> None:
    t = target()
    _idempotency_index(t, ["queue", sa.text("coalesce(owner_id, '')"), "idempotency_key"])
    _fail_jobs_out_of_bounds(t)
    if t.dialect != "postgresql":
        _rebuild_sqlite(t, _table(t, checked=True, owner_scoped=True))
        return
    checks = {f"{t.name}_{name}_check": expr for name, expr in bounds(t.dialect).items()}
    added = (f'ADD CONSTRAINT "{name}" CHECK ({expr}) NOT VALID' for name, expr in checks.items())
    op.execute(f"ALTER TABLE {t.qualified} " + ", ".join(added))
    validate = " ".join(
        f"IF NOT EXISTS (SELECT FROM {t.qualified} WHERE NOT ({expr})) THEN "
        f'ALTER TABLE {t.qualified} VALIDATE CONSTRAINT "{name}"; END IF;'
        for name, expr in checks.items()
    )
    op.execute(f"DO $jobqueue$ BEGIN {validate} END $jobqueue$")


def downgrade() -> None:
    t = target()
    if not op.get_context().as_sql:
        shared = (
            op.get_bind()
            .execute(
                sa.text(
                    f"SELECT count(*) FROM (SELECT 1 FROM {t.qualified} "
                    "WHERE idempotency_key IS NOT NULL "
                    "GROUP BY queue, idempotency_key HAVING count(*) > 1) AS shared"
                )
            )
            .scalar()
        )
        if shared:
            raise ConfigurationError(
                f"cannot go back to revision 0002: {shared} idempotency keys are used by more "
                "than one owner in the same queue, and 0002 allows one job per key and queue",
                hint="clear the key (SET idempotency_key = NULL) on all but one job of each, "
                "then downgrade again",
            )
    if t.dialect == "postgresql":
        for name in bounds(t.dialect):
            op.execute(
                f'ALTER TABLE {t.qualified} DROP CONSTRAINT IF EXISTS "{t.name}_{name}_check"'
            )
        _idempotency_index(t, ["queue", "idempotency_key"])
    else:
        _idempotency_index(t, ["queue", "idempotency_key"])
        _rebuild_sqlite(t, _table(t, checked=False, owner_scoped=False))
