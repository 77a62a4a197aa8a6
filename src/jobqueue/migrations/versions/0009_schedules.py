"""Periodic jobs: the schedules table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

``<table>_schedules``: one row per schedule (a cron expression in a time zone, or an
interval), the job each tick enqueues, what to do about ticks missed while no worker ran,
and ``next_tick``, which the scheduler of every worker waits for and exactly one of them
moves on per tick (`jobqueue.sql.schedules`). A new table: nothing else changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.migrations import TableWork, target
from jobqueue.sql.dialect import DbNow, UTCDateTime, json_type
from jobqueue.sql.table import schedules_table_name

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="none on the jobs table: it creates the schedules table",
    rewrites=False,
    sqlite_rewrites=False,
)


def upgrade() -> None:
    t = target()
    n = schedules_table_name(t.name)
    op.create_table(
        n,
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(200), nullable=False, server_default="default"),
        sa.Column("payload", json_type(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("priority", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("cron", sa.String(200)),
        sa.Column("every_seconds", sa.Float()),
        sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("missed", sa.String(10), nullable=False, server_default="once"),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("next_tick", UTCDateTime(), nullable=False),
        sa.Column("last_tick", UTCDateTime()),
        sa.Column("created_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        sa.Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        sa.PrimaryKeyConstraint("name", name=f"{n}_pkey"),
        # Written as the schema module renders them (`jobqueue.sql.table.schedules_table`).
        sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name=f"{n}_nam_check"),
        sa.CheckConstraint("length(kind) BETWEEN 1 AND 200", name=f"{n}_knd_check"),
        sa.CheckConstraint("length(queue) BETWEEN 1 AND 200", name=f"{n}_que_check"),
        sa.CheckConstraint("priority BETWEEN -1000000 AND 1000000", name=f"{n}_pri_check"),
        sa.CheckConstraint(
            "cron IS NOT NULL AND every_seconds IS NULL AND length(cron) >= 1 OR "
            "cron IS NULL AND every_seconds IS NOT NULL AND "
            "every_seconds BETWEEN 1.0 AND 31622400.0",
            name=f"{n}_tim_check",
        ),
        sa.CheckConstraint("length(timezone) BETWEEN 1 AND 64", name=f"{n}_tz_check"),
        sa.CheckConstraint("missed IN ('once', 'skip')", name=f"{n}_mis_check"),
        schema=t.schema,
    )
    op.create_index(f"{n}_due_idx", n, ["next_tick"], schema=t.schema)


def downgrade() -> None:
    t = target()
    n = schedules_table_name(t.name)
    op.drop_index(f"{n}_due_idx", table_name=n, schema=t.schema)
    op.drop_table(n, schema=t.schema)
