"""The statements a metrics scrape runs: what the jobs table says about the whole fleet,
in two grouped reads whatever the number of jobs (`jobqueue.operations.gauges`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    String,
    and_,
    case,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)

from .common import StatementsBase, param
from .dialect import DbNow, DbNowPlus, DbStartOfDay, Money, UTCDateTime
from .steps import Query


class Gauging(StatementsBase):
    """The reads behind the database's gauges."""

    def backlog(self, overdue_after: float) -> Query:
        """Per queue and status of the jobs waiting or running (``pending``,
        ``processing``): how many (``jobs``), the oldest ``run_at`` of those due
        (``oldest_due``, pending only), how many have been due for over ``overdue_after``
        seconds (``overdue``, pending only), and how many hold a lease that has run out
        (``stuck``, processing only: their worker is gone and no claim or reaper has taken
        them back yet).

        The condition names each partial index's own predicate (the line, the jobs waiting
        to enter it, the held jobs), so PostgreSQL reads those three indexes, never the
        finished jobs that make up most of a long-lived table.
        """

        def build() -> Any:
            c = self.t.c
            pending = c.status == literal_column("'pending'")
            processing = c.status == literal_column("'processing'")
            now = DbNow()
            overdue = DbNowPlus(param("overdue_at", Float()))
            return (
                select(
                    c.queue,
                    c.status,
                    func.count().label("jobs"),
                    func.min(
                        case((and_(pending, c.run_at <= now), c.run_at)), type_=UTCDateTime()
                    ).label("oldest_due"),
                    func.sum(
                        case((and_(pending, c.run_at < overdue), 1), else_=0), type_=Integer()
                    ).label("overdue"),
                    func.sum(
                        case((and_(processing, c.lease_expires_at < now), 1), else_=0),
                        type_=Integer(),
                    ).label("stuck"),
                )
                .where(
                    or_(
                        and_(pending, c.turn.isnot(None)),
                        and_(pending, c.turn.is_(None)),
                        processing,
                    )
                )
                .group_by(c.queue, c.status)
            )

        return Query(self.once("gauge_backlog", build), {"jq_overdue_at": -overdue_after})

    def fleet(self) -> Query:
        """One row per fact beside the backlog, told apart by ``what``: ``now`` (the
        database clock, ``at``), ``paused`` (a queue or limit key paused now: ``scope``,
        ``name``, ``at`` when the pause ends or NULL), and ``spend`` (``amount``: the cost
        reported so far by the jobs created since midnight UTC, per ``scope`` = cost unit).
        The spend reads the jobs by ``created_at``, through its index."""

        def build() -> Any:
            c, lc = self.t.c, self.limits.c
            now = DbNow()
            text = String()
            spend = (
                select(
                    literal("spend", text).label("what"),
                    c.cost_unit.label("scope"),
                    type_coerce(null(), text).label("name"),
                    type_coerce(null(), UTCDateTime()).label("at"),
                    func.sum(c.cost, type_=Money()).label("amount"),
                )
                .where(c.created_at >= DbStartOfDay(), c.cost.isnot(None))
                .group_by(c.cost_unit)
            )
            paused = select(
                literal("paused", text),
                lc.scope,
                lc.name,
                lc.paused_until,
                null(),
            ).where(
                lc.paused_at.isnot(None),
                or_(lc.paused_until.is_(None), lc.paused_until > now),
            )
            clock = select(literal("now", text), null(), null(), now, null())
            return union_all(spend, paused, clock)

        return Query(self.once("gauge_fleet", build), None)


__all__ = ["Gauging"]
