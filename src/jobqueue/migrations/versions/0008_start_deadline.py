"""A job's start deadline, and the ``expired`` status of a job not started by it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

1. ``start_by``: when the job must have started (NULL: no deadline, as for every existing
   row). No check constraint: PostgreSQL's ``infinity`` is a deadline that never comes and
   ``-infinity`` one long past, and both compare as such.
2. ``<table>_status_check`` allows ``expired``. The new condition is wider than the old
   one, so every row meets it. On PostgreSQL the constraint is replaced (one scan of the
   table, under the lock the ALTER takes, to validate it); on SQLite, which cannot alter a
   constraint, the table's stored definition is edited in place, the way SQLite documents
   for changes that leave every stored row valid (no copy of the table).
3. ``<table>_deadline_idx`` on ``start_by`` over pending jobs that have a deadline: what
   the expiry sweep reads. Partial, so an enqueue without a deadline writes no entry in it.

Going back turns ``expired`` jobs into ``cancelled`` ones (with an error saying so) before
the old constraint returns, then drops the index and the column.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.errors import ConfigurationError
from jobqueue.migrations import TableWork, Target, target

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="ACCESS EXCLUSIVE while it adds a column, scans the table for the new status "
    "check and builds the deadline index",
    rewrites=False,
    sqlite_rewrites=False,
)

# Written out, not derived from `jobqueue.models.Status`: a revision describes the schema
# as it was at that revision, whatever statuses come later.
OLD_STATUSES = "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')"
NEW_STATUSES = "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled', 'expired')"

EXPIRED_BY_DOWNGRADE = (
    "expired: not started by its deadline (shown as cancelled since the downgrade of "
    "migration 0008)"
)


def _status_check(t: Target, condition: str) -> None:
    name = f"{t.name}_status_check"
    if t.dialect == "postgresql":
        op.execute(
            f'ALTER TABLE {t.qualified} DROP CONSTRAINT IF EXISTS "{name}", '
            f'ADD CONSTRAINT "{name}" CHECK ({condition})'
        )
        return
    old = OLD_STATUSES if condition == NEW_STATUSES else NEW_STATUSES
    _edit_sqlite_check(t, f"CHECK ({old})", f"CHECK ({condition})")


def _edit_sqlite_check(t: Target, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in the SQLite table's stored definition (see SQLite's
    "Making Other Kinds Of Table Schema Changes": allowed where every stored row stays
    valid, which a wider status check guarantees and a narrower one does after the
    downgrade has moved the rows it would refuse)."""
    conn = op.get_bind()
    master = f'"{t.schema}".sqlite_master' if t.schema else "sqlite_master"
    ddl = conn.exec_driver_sql(
        f"SELECT sql FROM {master} WHERE type = 'table' AND name = ?", (t.name,)
    ).scalar()
    if ddl is None or ddl.count(old) != 1:
        raise ConfigurationError(
            f"cannot migrate {t.name}: its status check constraint is not the one jobqueue "
            f"created ({old!r} not found once in its definition)",
            hint="restore the constraint as jobqueue created it, then run `jobqueue migrate`",
        )
    version = conn.exec_driver_sql("PRAGMA schema_version").scalar_one()
    conn.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        conn.exec_driver_sql(
            f"UPDATE {master} SET sql = ? WHERE type = 'table' AND name = ?",
            (ddl.replace(old, new), t.name),
        )
        # Tells every connection (this one included) to read the schema again.
        conn.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        conn.exec_driver_sql("PRAGMA writable_schema = OFF")
    # The next statement reads the schema again: one SQLite could not parse fails here,
    # inside the migration's transaction, which then leaves the file as it was.
    conn.exec_driver_sql(f"SELECT 1 FROM {t.qualified} LIMIT 0")


def upgrade() -> None:
    t = target()
    # Quoted, as 0005 added its columns: SQLite keeps the text as written in the table's
    # definition.
    type_ = "TIMESTAMP WITH TIME ZONE" if t.dialect == "postgresql" else "DATETIME"
    op.execute(f'ALTER TABLE {t.qualified} ADD COLUMN "start_by" {type_}')
    _status_check(t, NEW_STATUSES)
    deadline = sa.text("status = 'pending' AND start_by IS NOT NULL")
    op.create_index(
        f"{t.name}_deadline_idx",
        t.name,
        ["start_by"],
        schema=t.schema,
        postgresql_where=deadline,
        sqlite_where=deadline,
    )


def downgrade() -> None:
    t = target()
    message = "'" + EXPIRED_BY_DOWNGRADE.replace("'", "''") + "'"
    op.execute(
        f"UPDATE {t.qualified} SET status = 'cancelled', "
        f"error = coalesce(error, {message}) WHERE status = 'expired'"
    )
    _status_check(t, OLD_STATUSES)
    op.drop_index(f"{t.name}_deadline_idx", table_name=t.name, schema=t.schema)
    # A plain DROP COLUMN on SQLite too (3.35 and later): the column has no constraint and,
    # its index dropped, no index (a batch rebuild would lose the idempotency index).
    op.execute(f'ALTER TABLE {t.qualified} DROP COLUMN "start_by"')
