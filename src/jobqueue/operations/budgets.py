"""The operations of the owners' budgets: keeping them, and the enqueue that reserves
against them (see `jobqueue.sql.budgets` for what counts as spent)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from ..errors import BudgetExceeded, PayloadError
from ..models import Budget, Job, Placement
from ..sql.statements import Statements
from ..sql.steps import Row
from ..sql.table import BUDGET_PERIODS
from ..validation import check_cost, check_cost_unit, check_text
from .contract import Access, Steps, operation
from .jobs import _enqueue


def check_period(period: Any) -> str:
    if period not in BUDGET_PERIODS:
        raise PayloadError(
            f"a budget's period is one of {', '.join(BUDGET_PERIODS)}, not {period!r}",
            hint='"day" or "month" (calendar, UTC) start over; "balance" is prepaid',
        )
    return str(period)


def _budget(row: Row) -> Budget:
    return Budget(
        owner_id=row["owner_id"],
        amount=row["amount"],
        period=row["period"],
        cost_unit=row["cost_unit"],
        spent=row["spent"] if row["spent"] is not None else Decimal(0),
        since=row["since"],
        updated_at=row["updated_at"],
    )


@operation(Access.ONE_WRITE)
def set_budget(
    s: Statements, owner_id: str, amount: Any, period: str, cost_unit: str | None
) -> Steps[Budget]:
    """Create or replace an owner's budget; the budget as it now is, with what counts."""
    check_text(owner_id, "owner_id")
    checked = check_cost(amount, "amount")
    if checked is None:
        raise PayloadError("a budget needs an amount", hint='e.g. set_budget("user-42", "10")')
    yield s.set_budget(owner_id, checked, check_period(period), check_cost_unit(cost_unit))
    (row,) = yield s.budgets_with_spent([owner_id])
    return _budget(row)


@operation(Access.READ)
def get_budget(s: Statements, owner_id: str) -> Steps[Budget | None]:
    check_text(owner_id, "owner_id")
    rows = yield s.budgets_with_spent([owner_id])
    return _budget(rows[0]) if rows else None


@operation(Access.READ)
def list_budgets(s: Statements) -> Steps[list[Budget]]:
    return [_budget(r) for r in (yield s.budgets_with_spent(None))]


@operation(Access.ONE_WRITE)
def remove_budget(s: Statements, owner_id: str) -> Steps[bool]:
    check_text(owner_id, "owner_id")
    return bool((yield s.delete_budget(owner_id)))


@operation(Access.TRANSACTION)
def enqueue_within_budgets(
    s: Statements,
    rows: Sequence[dict[str, Any]],
    placement: Placement | None,
    estimates: Mapping[str, Decimal],
) -> Steps[list[Job]]:
    """Enqueue a batch some of whose owners have a budget (what `enqueue_many` hands on),
    all or nothing: lock those budgets, sum what each owner has spent, and insert the
    jobs with their estimates reserved, or raise `BudgetExceeded` having written nothing.

    A job's estimate is its own (``estimated_cost``), else ``estimates[kind]``, else 0: a
    job without one reserves nothing, but is still refused once its owner's budget is
    used up. A job an idempotency key already names reserves nothing again."""
    owners = sorted({r["owner_id"] for r in rows if r["owner_id"] is not None})
    locked = [r["owner_id"] for r in (yield s.lock_budgets(owners))]
    if locked:
        budgets = {b["owner_id"]: b for b in (yield s.budgets_with_spent(locked))}
        taken = yield from _keys_taken(s, [r for r in rows if r["owner_id"] in budgets])
        requested: dict[str, Decimal] = {}
        reserving: list[dict[str, Any]] = []
        for r in rows:
            owner = r["owner_id"]
            if owner in budgets:
                estimate = r.get("estimate")
                if estimate is None:
                    estimate = estimates.get(r["kind"], Decimal(0))
                r = {**r, "reserved": estimate}
                key = (r["queue"], owner, r["idempotency_key"])
                if r["idempotency_key"] is None or key not in taken:
                    requested[owner] = requested.get(owner, Decimal(0)) + estimate
                    taken.add(key)
            else:
                r = {**r, "reserved": None}  # every row of a statement has the column
            reserving.append(r)
        for owner, wanted in requested.items():
            _check_fits(budgets[owner], wanted)
        rows = reserving
    jobs = yield from _enqueue(s, rows, placement, guard=False)
    assert jobs is not None  # unguarded, it always enqueues
    return jobs


def _keys_taken(s: Statements, rows: Sequence[Mapping[str, Any]]) -> Steps[set[tuple[Any, ...]]]:
    """The (queue, owner, key) of ``rows`` whose idempotency key a job already holds."""
    taken: set[tuple[Any, ...]] = set()
    keyed = [r for r in rows if r["idempotency_key"] is not None]
    for queue, owner in {(r["queue"], r["owner_id"]) for r in keyed}:
        keys = [
            r["idempotency_key"] for r in keyed if (r["queue"], r["owner_id"]) == (queue, owner)
        ]
        for found in (yield s.by_idempotency_keys(queue, owner, keys)):
            taken.add((queue, owner, found["idempotency_key"]))
    return taken


def _check_fits(budget: Row, wanted: Decimal) -> None:
    amount: Decimal = budget["amount"]
    spent: Decimal = budget["spent"] if budget["spent"] is not None else Decimal(0)
    if spent + wanted <= amount and (wanted > 0 or spent < amount):
        return
    unit = f" {budget['cost_unit']}" if budget["cost_unit"] else ""
    period = {"day": "today's", "month": "this month's", "balance": "the prepaid"}.get(
        budget["period"], "the"
    )
    left = max(amount - spent, Decimal(0))
    if wanted > 0:
        why = f"reserving {wanted}{unit} would pass {period} budget of {amount}{unit}"
    else:  # jobs without an estimate: refused once nothing is left
        why = f"{period} budget of {amount}{unit} is used up"
    raise BudgetExceeded(
        f"owner {budget['owner_id']!r} is over budget: {why} ({spent}{unit} spent or "
        f"reserved, {left}{unit} left); nothing was enqueued",
        owner_id=budget["owner_id"],
        amount=amount,
        period=budget["period"],
        spent=spent,
        requested=wanted,
        hint=_raise_hint(budget),
    )


def _raise_hint(budget: Row) -> str:
    """The command that raises this very budget: `budget set` replaces a budget whole, so
    a command without the budget's own period and unit would also change those."""
    command = f"jobqueue budget set {shlex.quote(budget['owner_id'])} AMOUNT"
    command += f" --period {budget['period']}"
    if budget["cost_unit"]:
        command += f" --unit {shlex.quote(budget['cost_unit'])}"
    if budget["period"] == "balance":
        return f"top the prepaid balance up with `{command}` (it never starts over)"
    start = "at midnight UTC" if budget["period"] == "day" else "on the 1st of the month, UTC"
    return f"raise it with `{command}`, or wait until it starts over {start}"
