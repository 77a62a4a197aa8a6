"""The trace a job was enqueued in, which its runs continue.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

``trace_context``: the W3C ``traceparent`` and ``tracestate`` of the enqueue's span, as
JSON text (`jobqueue.tracing`), NULL in existing rows and in every job enqueued without
tracing, with a check constraint on its length. Adding it rewrites no table on either
database. Going back drops the column.
"""

from collections.abc import Sequence

from alembic import op
from jobqueue.migrations import TableWork, target

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="ACCESS EXCLUSIVE while it adds a column and scans the table for its check "
    "(seconds per million rows)",
    rewrites=False,
    sqlite_rewrites=False,
)

# Written out, not taken from `jobqueue.tracing.MAX_TRACE_CONTEXT`: a revision describes
# the schema as it was at that revision.
RULE = "length(trace_context) BETWEEN 1 AND 1024"


def upgrade() -> None:
    t = target()
    check = f'CONSTRAINT "{t.name}_trace_check" CHECK ({RULE})'
    if t.dialect == "postgresql":
        op.execute(f'ALTER TABLE {t.qualified} ADD COLUMN "trace_context" TEXT')
        op.execute(f"ALTER TABLE {t.qualified} ADD {check}")
    else:
        # As in 0005 and 0007: SQLite would check every row against every check constraint,
        # and refuse rows kept outside their bounds on purpose; the new column is NULL.
        op.execute("PRAGMA ignore_check_constraints = ON")
        try:
            op.execute(f'ALTER TABLE {t.qualified} ADD COLUMN "trace_context" TEXT {check}')
        finally:
            op.execute("PRAGMA ignore_check_constraints = OFF")


def downgrade() -> None:
    t = target()
    op.execute(f'ALTER TABLE {t.qualified} DROP COLUMN "trace_context"')
