"""Index only owned jobs in the owner index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Jobs without an owner (a backend's own work, bulk imports) are never listed by owner, yet
each one cost an entry in ``<table>_owner_idx``: a write on every enqueue and space for
as long as the row lives. Every query that reads the index filters on ``owner_id = …``,
which implies ``owner_id IS NOT NULL``, so PostgreSQL and SQLite still use it.

Rebuilding the index takes a write lock on the table for as long as the build takes
(seconds per million owned rows).
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.migrations import TableWork, target

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="ACCESS EXCLUSIVE (the old owner index is dropped) while it builds the new "
    "one (seconds per million rows)",
    rewrites=False,
    sqlite_rewrites=False,
)


def _owner_index(where: sa.TextClause | None) -> None:
    t = target()
    name = f"{t.name}_owner_idx"
    op.drop_index(name, table_name=t.name, schema=t.schema)
    op.create_index(
        name,
        t.name,
        ["owner_id", sa.text("created_at DESC")],
        schema=t.schema,
        postgresql_where=where,
        sqlite_where=where,
    )


def upgrade() -> None:
    _owner_index(sa.text("owner_id IS NOT NULL"))


def downgrade() -> None:
    _owner_index(None)
