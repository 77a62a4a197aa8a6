"""Fair share between owners: each job's place in the line (its ``turn``).

The line is the pending jobs with a turn, claimed by priority, then turn, then id (the
claim index). A job's turn is set when it enters the line:

    turn = max(head, last + step) + (k - 1) * step

- ``head``: the smallest turn in the line among the jobs of its queue and priority (0 when
  there are none), so an owner with nothing waiting starts at the front;
- ``last``: the largest turn its owner has in the line in that queue (jobs without an
  owner count as one owner), so an owner's jobs follow each other one ``step`` apart;
- ``step``: 1 divided by the owner's weight (the ``weight`` of its ``owner`` limits row,
  else 1), so a weight of 2 puts two jobs in each round where others have one;
- ``k``: the job's rank among the jobs of the same owner and queue entering together (a
  batch).

So the line interleaves owners: an owner's n-th job sits about n steps behind the head,
whatever other owners have queued, and one user's backlog of 1,000 jobs delays another
user's single job by at most one round (one job of each owner with jobs waiting ahead of
it). Computing a turn costs three index probes: the claim index for ``head``, the turn
index for ``last``, the limits table's primary key for the weight.

Jobs that wait for a time are not in the line: a job scheduled for later, a retry backing
off, a job held back by its provider (`RetryLater`), and a row another client inserted
without a turn. They enter it when due (`Entering.enter_line`, run by every worker), with a
turn computed the same way at that moment.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Float, Table, case, func, literal, literal_column, select

from ..models import MAX_TURN
from .dialect import Larger, Smaller


def in_line(t: Table) -> ColumnElement[bool]:
    """The condition of the claim and turn indexes: pending, with a place in the line.

    ``'pending'`` is written into the SQL, not bound: SQLite uses a partial index only for
    a query whose condition implies the index's own, and a parameter implies nothing."""
    return (t.c.status == literal_column("'pending'")) & t.c.turn.isnot(None)


def _head(t: Table, queue: Any, priority: Any) -> Any:
    c = t.c
    return (
        select(c.turn)
        .where(c.queue == queue, c.priority == priority, in_line(t))
        .order_by(c.turn)
        .limit(1)
        .scalar_subquery()
    )


def _last(t: Table, queue: Any, owner: Any) -> Any:
    """The owner's last turn in the queue's line (one probe of the turn index; NULL owners
    get their own branch, as ``owner_id = NULL`` matches nothing).

    The order names ``owner_id`` too: PostgreSQL takes ``owner_id IS NULL`` as a condition
    on the index but not as fixing the column for its order, so ordered by ``turn`` alone
    it would read every unowned job in the line and sort them to find the last one (for
    each job entering the line). Ordered by both, a backward scan gives the order and the
    first entry is the answer."""
    c = t.c

    def last_where(*cond: ColumnElement[bool]) -> Any:
        return (
            select(c.turn)
            .where(c.queue == queue, *cond, in_line(t))
            .order_by(c.owner_id.desc(), c.turn.desc())
            .limit(1)
            .scalar_subquery()
        )

    return case(
        (owner.is_(None), last_where(c.owner_id.is_(None))),
        else_=last_where(c.owner_id == owner),
    )


def step(limits: Table, owner: Any) -> Any:
    """1 / the owner's weight (1 without a weight)."""
    lc = limits.c
    weight = select(lc.weight).where(lc.scope == "owner", lc.name == owner).scalar_subquery()
    return literal(1.0, Float()) / func.coalesce(weight, literal(1.0, Float()))


def turn_of(
    t: Table, limits: Table, queue: Any, priority: Any, owner: Any, rank: Any | None
) -> Any:
    """The turn of a job entering the line (see the module's docstring); ``rank`` is its
    ``k``, None for a job entering alone (``k`` = 1: the statement then has no
    ``(k - 1) * step`` term, whose second look-up of the weight would run for nothing)."""
    s = step(limits, owner)
    head = func.coalesce(_head(t, queue, priority), literal(0.0, Float()))
    # Each look-up appears once in the expression: a CASE comparing them would repeat
    # (and run again) the subqueries, for every job entering the line.
    base = Larger(head, func.coalesce(_last(t, queue, owner) + s, head))
    if rank is None:
        return Smaller(base, literal(MAX_TURN, Float()))
    return Smaller(base + (rank - 1) * s, literal(MAX_TURN, Float()))
