"""Costs and budgets: what each job cost, what its owner's budget reserved for it, and the
budgets table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

1. ``cost`` (what the job cost, every attempt's reported cost added up), ``cost_unit``
   (its unit or currency) and ``reserved`` (the estimate its owner's budget reserved for
   it at enqueue), NULL in existing rows, each with a check constraint. Amounts are exact:
   ``numeric(20, 6)`` on PostgreSQL, an integer number of millionths on SQLite
   (`jobqueue.sql.dialect.Money`).
2. ``<table>_budgets``: each owner's budget (an amount per day or month, or a prepaid
   balance), which `enqueue` reserves the jobs' estimated costs against.

Adding the columns rewrites no table on either database.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from jobqueue.migrations import TableWork, target
from jobqueue.sql.dialect import DbNow, Money, UTCDateTime

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: What it does to an existing jobs table (docs/operations.md; a comment in `jobqueue sql`).
TABLE_WORK = TableWork(
    locks="ACCESS EXCLUSIVE while it adds three columns and scans the table for their "
    "checks (seconds per million rows)",
    rewrites=False,
    sqlite_rewrites=False,
)

#: The largest amount, as each database stores it (`jobqueue.models.MAX_COST`).
MAX_PG = "1000000000000"
MAX_SQLITE = "1000000000000000000"


def _money_check(column: str, dialect: str) -> str:
    # Written as the schema module renders them (`jobqueue.sql.dialect.MoneyBounds`).
    if dialect == "postgresql":
        return f"{column} BETWEEN 0 AND {MAX_PG}"
    return (
        f"({column} IS NULL OR typeof({column}) = 'integer' "
        f"AND {column} BETWEEN 0 AND {MAX_SQLITE})"
    )


def upgrade() -> None:
    t = target()
    n = t.name
    money = "NUMERIC(20, 6)" if t.dialect == "postgresql" else "BIGINT"
    columns = {
        "cost": (money, _money_check("cost", t.dialect)),
        "cost_unit": ("VARCHAR(20)", "length(cost_unit) BETWEEN 1 AND 20"),
        "reserved": (money, _money_check("reserved", t.dialect)),
    }
    for column, (type_, rule) in columns.items():
        check = f'CONSTRAINT "{n}_{column}_check" CHECK ({rule})'
        if t.dialect == "postgresql":
            op.execute(f'ALTER TABLE {t.qualified} ADD COLUMN "{column}" {type_}')
            op.execute(f"ALTER TABLE {t.qualified} ADD {check}")
        else:
            # As in 0005: SQLite would check every row against every check constraint, and
            # refuse rows kept outside their bounds on purpose; the new column is NULL.
            op.execute("PRAGMA ignore_check_constraints = ON")
            try:
                op.execute(f'ALTER TABLE {t.qualified} ADD COLUMN "{column}" {type_} {check}')
            finally:
                op.execute("PRAGMA ignore_check_constraints = OFF")

    budgets = f"{n}_budgets"
    op.create_table(
        budgets,
        sa.Column("owner_id", sa.String(255), nullable=False),
        sa.Column("amount", Money(), nullable=False),
        sa.Column("period", sa.String(10), nullable=False),
        sa.Column("cost_unit", sa.String(20)),
        sa.Column("updated_at", UTCDateTime(), nullable=False, server_default=DbNow()),
        sa.PrimaryKeyConstraint("owner_id", name=f"{budgets}_pkey"),
        sa.CheckConstraint("length(owner_id) BETWEEN 1 AND 255", name=f"{budgets}_own_check"),
        sa.CheckConstraint(_money_check("amount", t.dialect), name=f"{budgets}_amt_check"),
        sa.CheckConstraint("period IN ('day', 'month', 'balance')", name=f"{budgets}_per_check"),
        sa.CheckConstraint("length(cost_unit) BETWEEN 1 AND 20", name=f"{budgets}_unt_check"),
        schema=t.schema,
    )


def downgrade() -> None:
    t = target()
    op.drop_table(f"{t.name}_budgets", schema=t.schema)
    for column in ("reserved", "cost_unit", "cost"):
        op.execute(f'ALTER TABLE {t.qualified} DROP COLUMN "{column}"')
