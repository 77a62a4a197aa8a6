"""Create the jobs table, its indexes and (PostgreSQL) the enqueue notification trigger.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Frozen history: this file describes the table as version 1 created it. Later changes
belong in new revisions; tests compare the migrated database with `jobqueue.sql.table`.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.migrations import TableWork, target
from jobqueue.sql.dialect import DbNow, NewJobId, UTCDateTime, json_type

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="none: it creates the table",
    rewrites=False,
    sqlite_rewrites=False,
)


def upgrade() -> None:
    t = target()
    n = t.name
    op.create_table(
        n,
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
        sa.CheckConstraint(
            "status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')",
            name=f"{n}_status_check",
        ),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name=f"{n}_progress_check"),
        sa.CheckConstraint("attempts >= 0 AND max_attempts >= 1", name=f"{n}_attempts_check"),
        schema=t.schema,
    )
    pending = sa.text("status = 'pending'")
    op.create_index(
        f"{n}_claim_idx",
        n,
        ["queue", sa.text("priority DESC"), "run_at", "id"],
        schema=t.schema,
        postgresql_where=pending,
        sqlite_where=pending,
    )
    processing = sa.text("status = 'processing'")
    op.create_index(
        f"{n}_lease_idx",
        n,
        ["lease_expires_at"],
        schema=t.schema,
        postgresql_where=processing,
        sqlite_where=processing,
    )
    op.create_index(f"{n}_owner_idx", n, ["owner_id", sa.text("created_at DESC")], schema=t.schema)
    op.create_index(f"{n}_created_idx", n, ["created_at"], schema=t.schema)
    has_key = sa.text("idempotency_key IS NOT NULL")
    op.create_index(
        f"{n}_idempotency_idx",
        n,
        ["queue", "idempotency_key"],
        unique=True,
        schema=t.schema,
        postgresql_where=has_key,
        sqlite_where=has_key,
    )
    if t.dialect == "postgresql":
        # Wake workers on every insert, whoever inserts (the library, a web front end under
        # RLS, psql). One notification per queue per statement, so a batch insert of 50,000
        # rows sends one signal, not 50,000.
        fn = t.qualify(f"{n}_notify")
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('{t.channel}', q.queue)
                FROM (SELECT DISTINCT queue FROM new_jobs WHERE status = 'pending') AS q;
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            f"""
            CREATE TRIGGER "{n}_notify" AFTER INSERT ON {t.qualified}
            REFERENCING NEW TABLE AS new_jobs
            FOR EACH STATEMENT EXECUTE FUNCTION {fn}()
            """
        )


def downgrade() -> None:
    t = target()
    if t.dialect == "postgresql":
        op.execute(f'DROP TRIGGER IF EXISTS "{t.name}_notify" ON {t.qualified}')
        op.execute(f"DROP FUNCTION IF EXISTS {t.qualify(t.name + '_notify')}()")
    op.drop_table(t.name, schema=t.schema)
