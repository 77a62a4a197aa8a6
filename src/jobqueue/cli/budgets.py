"""Commands about the owners' budgets: ``budget set``, ``budget show``, ``budget list`` and
``budget remove``.

They only call the queue's API (`JobQueue.set_budget`, `get_budget`, `list_budgets`,
`remove_budget`); what counts as spent is summed in the database (docs/costs.md).
"""

from __future__ import annotations

import click

from ..models import Budget
from ..sql.table import BUDGET_PERIODS
from .group import CommandFailed, Env, cli, pass_env
from .output import echo_json, out

#: What to do about an owner without a budget (owner ids are matched exactly).
NO_BUDGET_HINT = "`jobqueue budget list` shows the owners that have one"


def budget_line(budget: Budget) -> str:
    """One budget as one line: ``ann: 3.5 of 10 USD spent this month, 6.5 left``."""
    unit = f" {budget.cost_unit}" if budget.cost_unit else ""
    period = {"day": "today", "month": "this month", "balance": "of the prepaid balance"}.get(
        budget.period, budget.period
    )
    return (
        f"{budget.owner_id}: {budget.spent} of {budget.amount}{unit} spent {period}, "
        f"{budget.remaining}{unit} left"
    )


@cli.group("budget")
def budget_group() -> None:
    """Per-owner budgets that enqueues cannot overspend, kept in the database.

    An owner with a budget has each job's estimated cost reserved at enqueue, and is
    refused (BudgetExceeded) once the reservations and real costs of its jobs would pass
    it. See docs/costs.md.
    """


@budget_group.command("set")
@click.argument("owner_id")
@click.argument("amount")
@click.option(
    "--period",
    type=click.Choice(BUDGET_PERIODS),
    default="month",
    show_default=True,
    help="Per calendar day or month (UTC), or a prepaid balance that never starts over.",
)
@click.option("--unit", "cost_unit", metavar="UNIT", help="Count only costs in UNIT (USD).")
@pass_env
def budget_set_command(
    env: Env, owner_id: str, amount: str, period: str, cost_unit: str | None
) -> None:
    """Give OWNER_ID a budget of AMOUNT per --period, replacing any it had.

    For example `jobqueue budget set user-42 5 --period day --unit USD`."""
    with env.queue() as q:
        budget = q.set_budget(owner_id, amount, period=period, cost_unit=cost_unit)
    out().print(budget_line(budget), markup=False, soft_wrap=True)


@budget_group.command("show")
@click.argument("owner_id")
@click.option("--json", "as_json", is_flag=True, help="Print the budget as JSON.")
@pass_env
def budget_show_command(env: Env, owner_id: str, as_json: bool) -> None:
    """Show OWNER_ID's budget and what counts against it now (exit code 1: it has none)."""
    with env.queue() as q:
        budget = q.get_budget(owner_id)
    if budget is None:
        raise CommandFailed(f"owner {owner_id!r} has no budget — {NO_BUDGET_HINT}")
    if as_json:
        echo_json(budget.to_dict())
    else:
        out().print(budget_line(budget), markup=False, soft_wrap=True)


@budget_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the budgets as JSON.")
@pass_env
def budget_list_command(env: Env, as_json: bool) -> None:
    """Every owner's budget and what counts against it now."""
    with env.queue() as q:
        budgets = q.list_budgets()
    if as_json:
        echo_json([b.to_dict() for b in budgets])
    elif not budgets:
        out().print("No budgets set. Add one with `jobqueue budget set OWNER AMOUNT`.")
    else:
        for budget in budgets:
            out().print(budget_line(budget), markup=False, soft_wrap=True)


@budget_group.command("remove")
@click.argument("owner_id")
@pass_env
def budget_remove_command(env: Env, owner_id: str) -> None:
    """Delete OWNER_ID's budget: its enqueues are no longer limited."""
    with env.queue() as q:
        removed = q.remove_budget(owner_id)
    if not removed:
        raise CommandFailed(f"owner {owner_id!r} has no budget — {NO_BUDGET_HINT}")
    out().print(f"removed the budget of {owner_id}", markup=False, soft_wrap=True)
