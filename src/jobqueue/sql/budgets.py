"""The statements of the owners' budgets (`jobqueue.sql.table.budgets_table`).

No running total is kept: what an owner has spent in the current period is summed from
the jobs table whenever it is needed, so nothing can drift out of step with the jobs. A
job created in the period counts

- while ``pending`` or ``processing``: what it reserved at enqueue or what it has cost so
  far, whichever is more;
- once final: what it cost. A job that failed before any attempt cost money, was
  cancelled before it started, or expired has no cost: its reservation is released by the
  move itself, and a completion settles the real cost in the same way.

A cost in another unit than the budget's is not counted (a budget without a unit counts
every cost). The period starts at midnight UTC (``day``) or on the first of the month
(``month``) by the database clock, and never for a prepaid ``balance``. The sum reads the
owner's jobs through the owner index (``owner_id, created_at``), from the period's start.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FunctionElement,
    String,
    Table,
    Text,
    bindparam,
    case,
    delete,
    exists,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from ..models import Status
from .common import StatementsBase, param
from .dialect import DbNow, Money, UTCDateTime
from .steps import Query
from .table import budgets_table


class PeriodStart(FunctionElement[Any]):
    """When a budget's current period began, by the database clock (UTC): midnight for
    ``day``, the first of the month for ``month``, NULL for a ``balance``."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(PeriodStart, "postgresql")
def _period_start_pg(element: PeriodStart, compiler: SQLCompiler, **kw: Any) -> str:
    (period,) = element.clauses
    p = compiler.process(period, **kw)
    utc = "(statement_timestamp() AT TIME ZONE 'UTC')"
    return (
        f"(CASE {p} WHEN 'day' THEN date_trunc('day', {utc}) AT TIME ZONE 'UTC' "
        f"WHEN 'month' THEN date_trunc('month', {utc}) AT TIME ZONE 'UTC' END)"
    )


@compiles(PeriodStart)
def _period_start_sqlite(element: PeriodStart, compiler: SQLCompiler, **kw: Any) -> str:
    # The text form every stored time has (`jobqueue.sql.dialect.SQLITE_NOW`).
    (period,) = element.clauses
    p = compiler.process(period, **kw)
    return (
        f"(CASE {p} WHEN 'day' THEN strftime('%Y-%m-%d 00:00:00.000000', 'now') "
        f"WHEN 'month' THEN strftime('%Y-%m-01 00:00:00.000000', 'now') END)"
    )


class _Since(FunctionElement[Any]):
    """A period's start, or the beginning of time for a balance: a bound the owner
    index can range over."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(_Since, "postgresql")
def _since_pg(element: _Since, compiler: SQLCompiler, **kw: Any) -> str:
    (start,) = element.clauses
    return f"coalesce({compiler.process(start, **kw)}, '-infinity'::timestamptz)"


@compiles(_Since)
def _since_sqlite(element: _Since, compiler: SQLCompiler, **kw: Any) -> str:
    (start,) = element.clauses
    return f"coalesce({compiler.process(start, **kw)}, '')"


class _Greater(FunctionElement[Any]):
    """The greater of two amounts."""

    inherit_cache = True


@compiles(_Greater, "postgresql")
def _greater_pg(element: _Greater, compiler: SQLCompiler, **kw: Any) -> str:
    return f"greatest({compiler.process(element.clauses, **kw)})"


@compiles(_Greater)
def _greater_sqlite(element: _Greater, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's max() of two arguments is the scalar one.
    return f"max({compiler.process(element.clauses, **kw)})"


#: The statuses in which a job's reservation still counts.
LIVE = (Status.PENDING.value, Status.PROCESSING.value)


def spent_by(jobs: Table, budgets: Table) -> ColumnElement[Any]:
    """What the owner of the ``budgets`` row has spent in its period (a correlated
    subquery, see the module's docstring)."""
    j, b = jobs.c, budgets.c
    zero: ColumnElement[Any] = literal_column("0")
    counted = case(
        (or_(b.cost_unit.is_(None), j.cost_unit.is_(None), j.cost_unit == b.cost_unit), j.cost),
        else_=None,
    )
    cost = func.coalesce(counted, zero)
    each = case(
        (j.status.in_(LIVE), _Greater(func.coalesce(j.reserved, zero), cost)),
        else_=cost,
    )
    total = (
        select(func.coalesce(func.sum(each), zero))
        .where(j.owner_id == b.owner_id, j.created_at >= _Since(PeriodStart(b.period)))
        .scalar_subquery()
    )
    return type_coerce(total, Money())


class Budgeting(StatementsBase):
    """The owners' budgets: kept, read, locked, and summed against."""

    def __init__(self, table: Table, dialect: str) -> None:
        super().__init__(table, dialect)
        #: The owners' budgets of this table's jobs.
        self.budgets = budgets_table(table.name, table.schema, table.metadata)

    def _budget_columns(self) -> list[Any]:
        b = self.budgets.c
        return [
            b.owner_id,
            b.amount,
            b.period,
            b.cost_unit,
            b.updated_at,
            spent_by(self.t, self.budgets).label("spent"),
            PeriodStart(b.period).label("since"),
        ]

    def budgets_with_spent(self, owners: Sequence[str] | None) -> Query:
        """The budgets of ``owners`` (None: every budget), each with what its owner has
        spent in its period (``spent``) and when that began (``since``), by owner."""
        some = owners is not None

        def build() -> Any:
            stmt = select(*self._budget_columns()).order_by(self.budgets.c.owner_id)
            if some:
                stmt = stmt.where(
                    self.budgets.c.owner_id.in_(bindparam("jq_owners", expanding=True))
                )
            return stmt

        params = {"jq_owners": list(owners)} if owners is not None else {}
        return Query(self.once(("budgets", some), build), params)

    def lock_budgets(self, owners: Sequence[str]) -> Query:
        """Lock the budget rows of ``owners`` (PostgreSQL; in the owners' order, so that two
        batches with owners in common cannot deadlock) until the transaction ends: the
        enqueues for an owner with a budget then sum and reserve one at a time. SQLite
        needs no lock: its writers already run one at a time (``BEGIN IMMEDIATE``).
        Returns the owners with a budget."""

        def build() -> Any:
            b = self.budgets.c
            stmt = (
                select(b.owner_id)
                .where(b.owner_id.in_(bindparam("jq_owners", expanding=True)))
                .order_by(b.owner_id)
            )
            return stmt.with_for_update() if self.dialect == "postgresql" else stmt

        return Query(self.once("lock_budgets", build), {"jq_owners": sorted(owners)})

    def budgeted(self, owners: Sequence[str]) -> Query:
        """Which of ``owners`` have a budget (rows of ``owner_id``)."""

        def build() -> Any:
            b = self.budgets.c
            return select(b.owner_id).where(b.owner_id.in_(bindparam("jq_owners", expanding=True)))

        return Query(self.once("budgeted", build), {"jq_owners": list(owners)})

    def no_budget_for(self, owner: Any) -> ColumnElement[bool]:
        """True when ``owner`` (an expression) has no budget: the guard of the plain
        INSERT (`jobqueue.sql.enqueue`)."""
        b = self.budgets.c
        return ~exists(select(literal_column("1")).where(b.owner_id == owner))

    def set_budget(self, owner_id: str, amount: Any, period: str, cost_unit: str | None) -> Query:
        """Create or replace an owner's budget."""

        def build() -> Any:
            b = self.budgets.c
            insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            stmt = insert(self.budgets).values(
                owner_id=param("owner_id", Text()),
                amount=param("amount", Money()),
                period=param("period", String()),
                cost_unit=param("cost_unit", String()),
                updated_at=DbNow(),
            )
            return stmt.on_conflict_do_update(
                index_elements=[b.owner_id],
                set_={
                    "amount": stmt.excluded.amount,
                    "period": stmt.excluded.period,
                    "cost_unit": stmt.excluded.cost_unit,
                    "updated_at": DbNow(),
                },
            ).returning(b.owner_id)

        params = {
            "jq_owner_id": owner_id,
            "jq_amount": amount,
            "jq_period": period,
            "jq_cost_unit": cost_unit,
        }
        return Query(self.once("set_budget", build), params)

    def delete_budget(self, owner_id: str) -> Query:
        """Delete an owner's budget (RETURNING it when there was one)."""

        def build() -> Any:
            b = self.budgets.c
            return (
                delete(self.budgets)
                .where(b.owner_id == param("owner_id", Text()))
                .returning(b.owner_id)
            )

        return Query(self.once("delete_budget", build), {"jq_owner_id": owner_id})

    def still_counted(self) -> ColumnElement[bool]:
        """True for a job that still counts against its owner's budget: one of the owner's
        current period, or any job of a prepaid balance (whose costs count forever).
        `prune` keeps them."""
        j, b = self.t.c, self.budgets.c
        return exists(
            select(literal_column("1")).where(
                b.owner_id == j.owner_id,
                j.created_at >= _Since(PeriodStart(b.period)),
            )
        )
