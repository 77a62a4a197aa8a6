"""The live-workers table: one heartbeat row per running worker.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

Workers write their row at start, refresh it on a timer and delete it on a clean stop;
rows of crashed workers expire and are deleted by the live ones. Waits, `jobqueue check`
and `jobqueue workers` read it to say whether any live worker serves a queue.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.migrations import TableWork, target
from jobqueue.sql.dialect import DbNow, UTCDateTime, json_type
from jobqueue.sql.table import workers_table_name

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="none on the jobs table: it creates the live-workers table",
    rewrites=False,
    sqlite_rewrites=False,
)


def upgrade() -> None:
    t = target()
    n = workers_table_name(t.name)
    op.create_table(
        n,
        sa.Column("worker_id", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", json_type(), nullable=False),
        sa.Column("kinds", json_type()),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        sa.Column("last_beat_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("worker_id", name=f"{n}_pkey"),
        schema=t.schema,
    )


def downgrade() -> None:
    t = target()
    op.drop_table(workers_table_name(t.name), schema=t.schema)
