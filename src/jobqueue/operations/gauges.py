"""What the jobs table says about the whole fleet right now, for metrics (`Gauges`): read
in two grouped statements (`jobqueue.sql.gauges`), whatever the number of jobs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from ..models import Status
from ..sql.statements import Statements
from ..sql.steps import Rows
from .contract import Access, Steps, operation

#: A due job not claimed for this long is overdue (`QueueGauge.overdue`): no worker serves
#: its queue, or none has room (`jobqueue check` warns of it).
OVERDUE_AFTER = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class QueueGauge:
    """One queue's jobs waiting and running."""

    #: Jobs ``pending`` (due or not) and ``processing``.
    pending: int = 0
    running: int = 0
    #: Seconds the longest-waiting due job has waited since it was due (0: none is due).
    oldest_pending_age: float = 0.0
    #: Running jobs whose lease ran out: their worker is gone, and no claim or reaper has
    #: taken them back yet.
    stuck: int = 0
    #: Jobs due for longer than `OVERDUE_AFTER` and not claimed yet.
    overdue: int = 0


@dataclass(frozen=True, slots=True)
class Gauges:
    """The fleet as the database sees it at ``now`` (its clock)."""

    now: datetime
    #: By queue: only queues with jobs waiting or running.
    queues: Mapping[str, QueueGauge] = field(default_factory=dict)
    #: The queues and limit keys paused now, as ``(scope, name)`` (scope ``queue``,
    #: ``key`` or ``owner``).
    paused: tuple[tuple[str, str], ...] = ()
    #: What the jobs created since midnight UTC (database clock) cost so far, per unit
    #: (``None``: no unit given).
    spend_today: Mapping[str | None, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Backlog:
    """The jobs waiting and running at ``now`` (the database clock), by queue: only
    queues with jobs waiting or running. What `Gauges` says of the jobs table, without the
    limits and costs it reads too."""

    now: datetime
    queues: Mapping[str, QueueGauge] = field(default_factory=dict)


@operation(Access.READ)
def backlog(s: Statements) -> Steps[Backlog]:
    """The backlog by queue, and the database clock: two small reads."""
    rows = yield s.backlog(OVERDUE_AFTER.total_seconds())
    now: datetime = (yield s.now())[0]["now"]
    return Backlog(now, _by_queue(rows, now))


@operation(Access.READ)
def gauges(s: Statements) -> Steps[Gauges]:
    """The fleet's gauges, in two statements."""
    rows = yield s.backlog(OVERDUE_AFTER.total_seconds())
    fleet = yield s.fleet()
    now = next(r["at"] for r in fleet if r["what"] == "now")
    return Gauges(
        now,
        _by_queue(rows, now),
        tuple(sorted((r["scope"], r["name"]) for r in fleet if r["what"] == "paused")),
        {r["scope"]: r["amount"] for r in fleet if r["what"] == "spend"},
    )


def _by_queue(backlog: Rows, now: datetime) -> dict[str, QueueGauge]:
    """The backlog statement's rows (one per queue and status) as a gauge per queue."""
    counts: dict[str, dict[str, int | float]] = {}
    for r in backlog:
        q = counts.setdefault(
            r["queue"], {"pending": 0, "running": 0, "age": 0.0, "stuck": 0, "overdue": 0}
        )
        if r["status"] == Status.PENDING.value:
            q["pending"] = int(r["jobs"])
            q["overdue"] = int(r["overdue"] or 0)
            oldest = r["oldest_due"]
            if oldest is not None:
                q["age"] = max(0.0, (now - oldest).total_seconds())
        else:
            q["running"] = int(r["jobs"])
            q["stuck"] = int(r["stuck"] or 0)
    return {
        name: QueueGauge(
            int(q["pending"]),
            int(q["running"]),
            float(q["age"]),
            int(q["stuck"]),
            int(q["overdue"]),
        )
        for name, q in sorted(counts.items())
    }


__all__ = ["OVERDUE_AFTER", "Backlog", "Gauges", "QueueGauge", "backlog", "gauges"]
