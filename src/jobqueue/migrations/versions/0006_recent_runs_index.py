"""Each kind's latest completed runs, by an index: what a job's wait is estimated from.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

``<table>_done_idx`` on ``(kind, completed_at)`` over completed jobs lets
`JobQueue.position` read a kind's latest runs (`jobqueue.sql.position`) in a few index
entries however many jobs the table keeps. Each completion writes one more index entry.

On PostgreSQL, building it locks writes to the table for seconds per million completed
rows (prune first to keep it short).
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.migrations import TableWork, target

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="SHARE while it builds the recent-runs index: writes wait, reads go on",
    rewrites=False,
    sqlite_rewrites=False,
)


def upgrade() -> None:
    t = target()
    completed = sa.text("status = 'completed'")
    op.create_index(
        f"{t.name}_done_idx",
        t.name,
        ["kind", "completed_at"],
        schema=t.schema,
        postgresql_where=completed,
        sqlite_where=completed,
    )


def downgrade() -> None:
    t = target()
    op.drop_index(f"{t.name}_done_idx", table_name=t.name, schema=t.schema)
