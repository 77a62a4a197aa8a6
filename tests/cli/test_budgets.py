"""The budget commands (``budget set/show/list/remove``) and ``enqueue --estimated-cost``,
run as a user runs them: the installed console script in a subprocess, against SQLite and
PostgreSQL, the effect checked through the queue's own API."""

from __future__ import annotations

import json
from decimal import Decimal

from jobqueue import JobQueue, migrate
from tests.cli.helpers import Run


def test_budget_commands_keep_the_budget_enqueues_obey(
    jq: Run, db_url: str, table_name: str
) -> None:
    migrate(db_url, table=table_name)
    made = jq("budget", "set", "ann", "1.5", "--period", "day", "--unit", "USD")
    assert made.code == 0, made.err
    assert made.out.strip() == "ann: 0 of 1.5 USD spent today, 1.5 USD left"
    assert jq("budget", "set", "bob", "10", "--period", "balance").code == 0

    first = jq("enqueue", "email", "--owner", "ann", "--estimated-cost", "1")
    assert first.code == 0, first.err
    refused = jq("enqueue", "email", "--owner", "ann", "--estimated-cost", "1")
    # The hint's command keeps the budget's period and unit (`budget set` replaces it whole).
    refused.one_line_error(
        1, "over budget", "`jobqueue budget set ann AMOUNT --period day --unit USD`"
    )

    shown = jq("budget", "show", "ann", "--json")
    assert shown.code == 0, shown.err
    budget = json.loads(shown.out)
    assert (budget["spent"], budget["remaining"], budget["period"]) == ("1", "0.5", "day")
    listed = jq("budget", "list")
    assert listed.out.splitlines() == [
        "ann: 1 of 1.5 USD spent today, 0.5 USD left",
        "bob: 0 of 10 spent of the prepaid balance, 10 left",
    ]
    jq("budget", "remove", "carl").one_line_error(1, "no budget", "jobqueue budget list")
    jq("budget", "show", "carl").one_line_error(1, "no budget", "jobqueue budget list")
    # A prepaid balance is topped up, never waited for; the command keeps its period.
    jq("enqueue", "email", "--owner", "bob", "--estimated-cost", "11").one_line_error(
        1, "top the prepaid balance up with `jobqueue budget set bob AMOUNT --period balance`"
    )
    jq("budget", "set", "ann", "0.0000001").one_line_error(2, "amount")

    assert jq("budget", "remove", "ann").code == 0
    with JobQueue(db_url, table=table_name) as q:
        assert q.get_budget("ann") is None
        assert q.enqueue("image", {}, owner_id="ann", estimated_cost="5").reserved is None
        assert q.list_budgets()[0].amount == Decimal(10)
