"""Fair share and limits: each job's place in the line, its limit key, the limits table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

1. ``turn`` (a job's place in the fair-share line, `jobqueue.sql.fair`) and ``limit_key``
   (the name whose limits govern the job besides its queue; NULL means its kind), both
   NULL for existing rows, each with a check constraint.
2. ``<table>_claim_idx`` now orders the line: ``(queue, priority DESC, turn, id)`` over
   pending jobs that have a turn. ``<table>_turn_idx`` finds an owner's last turn, and
   ``<table>_entry_idx`` the jobs waiting to enter the line (no turn yet) by ``run_at``.
3. Pending jobs already due get turn 0, so they keep their order (by id, which follows
   creation) ahead of jobs enqueued after the upgrade; jobs due later enter the line when
   due, like new ones.
4. ``<table>_limits``: the caps, rates, pauses and weights every worker enforces.

On PostgreSQL, rebuilding the claim index and setting the turns locks the table for
seconds per million pending rows; adding the columns does not rewrite it.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.migrations import TableWork, target
from jobqueue.sql.dialect import DbNow, UTCDateTime, json_type

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="ACCESS EXCLUSIVE while it adds two columns, scans the table for their checks, "
    "sets the turns of pending jobs and builds three indexes (seconds per million rows)",
    rewrites=False,
    sqlite_rewrites=False,
)

CHECKS = {
    # Written as the schema module renders them, so both describe the same constraint.
    "turn": "turn BETWEEN -1000000000000000.0 AND 1000000000000000.0",
    "limit_key": "length(limit_key) BETWEEN 1 AND 200",
}


def upgrade() -> None:
    t = target()
    n = t.name
    columns = {"turn": "FLOAT", "limit_key": "VARCHAR(200)"}
    for column, type_ in columns.items():
        check = f'CONSTRAINT "{n}_{column}_check" CHECK ({CHECKS[column]})'
        if t.dialect == "postgresql":
            op.execute(f'ALTER TABLE {t.qualified} ADD COLUMN "{column}" {type_}')
            op.execute(f"ALTER TABLE {t.qualified} ADD {check}")
        else:
            # SQLite checks every row against all the table's check constraints when a
            # column comes with one, and refuses rows that 0003 kept outside its bounds on
            # purpose. The new column is NULL in every row, so its own check holds anyway.
            # The setting belongs to the connection, which outlives this migration.
            op.execute("PRAGMA ignore_check_constraints = ON")
            try:
                op.execute(f'ALTER TABLE {t.qualified} ADD COLUMN "{column}" {type_} {check}')
            finally:
                op.execute("PRAGMA ignore_check_constraints = OFF")
    now = "now()" if t.dialect == "postgresql" else "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
    op.execute(f"UPDATE {t.qualified} SET turn = 0 WHERE status = 'pending' AND run_at <= {now}")
    op.drop_index(f"{n}_claim_idx", table_name=n, schema=t.schema)
    in_line = sa.text("status = 'pending' AND turn IS NOT NULL")
    waiting = sa.text("status = 'pending' AND turn IS NULL")
    op.create_index(
        f"{n}_claim_idx",
        n,
        ["queue", sa.text("priority DESC"), "turn", "id"],
        schema=t.schema,
        postgresql_where=in_line,
        sqlite_where=in_line,
    )
    op.create_index(
        f"{n}_turn_idx",
        n,
        ["queue", "owner_id", "turn"],
        schema=t.schema,
        postgresql_where=in_line,
        sqlite_where=in_line,
    )
    op.create_index(
        f"{n}_entry_idx",
        n,
        ["run_at"],
        schema=t.schema,
        postgresql_where=waiting,
        sqlite_where=waiting,
    )
    limits = f"{n}_limits"
    finite = (
        "isfinite(paused_at) AND isfinite(paused_until) AND isfinite(updated_at)"
        if t.dialect == "postgresql"
        else "(paused_at IS NULL OR julianday(paused_at) IS NOT NULL) AND "
        "(paused_until IS NULL OR julianday(paused_until) IS NOT NULL) AND "
        "(updated_at IS NULL OR julianday(updated_at) IS NOT NULL)"
    )
    op.create_table(
        limits,
        sa.Column("scope", sa.String(20), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("max_running", sa.Integer()),
        sa.Column("max_running_per_owner", sa.Integer()),
        sa.Column("rate", sa.Integer()),
        sa.Column("per_seconds", sa.Float()),
        sa.Column("weight", sa.Float()),
        sa.Column("paused_at", UTCDateTime()),
        sa.Column("paused_until", UTCDateTime()),
        sa.Column("pause_reason", sa.Text()),
        sa.Column("starts", json_type(), nullable=False, server_default=sa.text("'[]'")),
        sa.Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        sa.PrimaryKeyConstraint("scope", "name", name=f"{limits}_pkey"),
        sa.CheckConstraint("scope IN ('queue', 'key', 'owner')", name=f"{limits}_scope_check"),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 255", name=f"{limits}_name_check"),
        sa.CheckConstraint("max_running BETWEEN 1 AND 100000", name=f"{limits}_cap_check"),
        sa.CheckConstraint(
            "max_running_per_owner BETWEEN 1 AND 100000", name=f"{limits}_owncap_check"
        ),
        sa.CheckConstraint(
            # AND binds before OR: both or neither (written as the schema module renders it;
            # without the IS NOT NULLs one of the two alone would make the check NULL, which
            # passes).
            "rate IS NULL AND per_seconds IS NULL OR "
            "rate IS NOT NULL AND per_seconds IS NOT NULL AND "
            "rate BETWEEN 1 AND 100000 AND per_seconds BETWEEN 0.001 AND 2678400.0",
            name=f"{limits}_rate_check",
        ),
        sa.CheckConstraint("weight BETWEEN 0.001 AND 1000", name=f"{limits}_weight_check"),
        sa.CheckConstraint(finite, name=f"{limits}_times_check"),
        schema=t.schema,
    )


def downgrade() -> None:
    t = target()
    n = t.name
    op.drop_table(f"{n}_limits", schema=t.schema)
    op.drop_index(f"{n}_entry_idx", table_name=n, schema=t.schema)
    op.drop_index(f"{n}_turn_idx", table_name=n, schema=t.schema)
    op.drop_index(f"{n}_claim_idx", table_name=n, schema=t.schema)
    pending = sa.text("status = 'pending'")
    op.create_index(
        f"{n}_claim_idx",
        n,
        ["queue", sa.text("priority DESC"), "run_at", "id"],
        schema=t.schema,
        postgresql_where=pending,
        sqlite_where=pending,
    )
    # On SQLite too (3.35 and later) a plain DROP COLUMN: each column's check is its own
    # column constraint, which goes with it, and no table rebuild is needed (a batch rebuild
    # would keep the checks as table constraints naming the dropped columns, and lose the
    # idempotency index, an expression index SQLAlchemy cannot reflect).
    for column in ("limit_key", "turn"):
        op.execute(f'ALTER TABLE {t.qualified} DROP COLUMN "{column}"')
