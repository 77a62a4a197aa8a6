"""The admin dashboard's statements: the overview's grouped reads, a page of the jobs table
by keyset, and the retry of many jobs at once.

Every read is bounded: the overview is three grouped statements whatever the table holds
(counts per queue and status, the last hour's finishes per minute, today's costs), and a
page of jobs is at most `MAX_PAGE` rows after a keyset ``(created_at, id)``, so paging
deep into a large table costs the same as its first page.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Integer,
    Text,
    Uuid,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    update,
)

from ..models import Status
from .common import param, status_values
from .dialect import DbNow, DbNowPlus, DbStartOfDay, MinutesAgo, Money, UTCDateTime
from .manage import Managing
from .steps import Query

#: The most rows one page of the jobs table holds, and the most jobs one retry takes.
MAX_PAGE = 100
#: How far back the throughput chart looks, in minutes.
THROUGHPUT_MINUTES = 60
#: The columns a page of the jobs table shows: never the payload or the result, which may
#: be large (base64 images); the job's own page reads those.
PAGE_COLUMNS = (
    "id",
    "queue",
    "kind",
    "status",
    "owner_id",
    "attempts",
    "max_attempts",
    "progress",
    "error",
    "cost",
    "cost_unit",
    "created_at",
    "updated_at",
    "completed_at",
)


class AdminStatements(Managing):
    """What the admin dashboard reads, and its one write of its own (retry many), which
    shares `Managing.retry`'s condition and values."""

    def counts(self) -> Query:
        """Per queue and status: the jobs, and the oldest one's creation time; for
        ``pending``, when the longest-waiting due job became due (its ``run_at``; None
        while none is due), the same wait as the metrics' oldest pending age, so that a
        job delayed to later, or a retry backing off, does not look stuck. Each row
        carries the database clock."""

        def build() -> Any:
            c = self.t.c
            return (
                select(
                    c.queue,
                    c.status,
                    func.count().label("count"),
                    func.min(
                        case(
                            (
                                c.status == literal_column(f"'{Status.PENDING.value}'"),
                                case((c.run_at <= DbNow(), c.run_at)),
                            ),
                            else_=c.created_at,
                        ),
                        type_=UTCDateTime(),
                    ).label("oldest"),
                    DbNow().label("now"),
                )
                .group_by(c.queue, c.status)
                .order_by(c.queue, c.status)
            )

        return Query(self.once("admin_counts", build), None)

    def throughput(self) -> Query:
        """The jobs that finished (completed or failed) in each of the last
        `THROUGHPUT_MINUTES` minutes by the database clock: minutes ago, status, count."""

        def build() -> Any:
            c = self.t.c
            ago = MinutesAgo(c.completed_at)
            return (
                select(ago.label("minutes_ago"), c.status, func.count().label("count"))
                .where(
                    c.status.in_(status_values((Status.COMPLETED, Status.FAILED))),
                    c.completed_at > DbNowPlus(-THROUGHPUT_MINUTES * 60.0),
                    c.completed_at <= DbNow(),
                )
                .group_by(ago, c.status)
            )

        return Query(self.once("admin_throughput", build), None)

    def cost_today(self) -> Query:
        """What jobs written today (UTC, by the database clock) cost, per cost unit."""

        def build() -> Any:
            c = self.t.c
            return (
                select(
                    c.cost_unit,
                    func.sum(c.cost, type_=Money()).label("cost"),
                    func.count().label("count"),
                )
                .where(c.cost.isnot(None), c.updated_at >= DbStartOfDay())
                .group_by(c.cost_unit)
                .order_by(c.cost_unit)
            )

        return Query(self.once("admin_cost_today", build), None)

    def page(
        self,
        *,
        statuses: Sequence[Status] | None,
        queue: str | None,
        kind: str | None,
        owner_id: str | None,
        created_from: datetime | None,
        created_to: datetime | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
    ) -> Query:
        """Newest first, ``limit`` rows after the keyset ``after`` (the last row's
        ``(created_at, id)`` of the page before), with the filters given."""
        chosen = tuple(status_values(statuses)) if statuses else None
        given = {
            "queue": queue,
            "kind": kind,
            "owner_id": owner_id,
            "created_from": created_from,
            "created_to": created_to,
        }
        shape = ("admin_page", chosen, after is not None, *(v is not None for v in given.values()))

        def build() -> Any:
            c = self.t.c
            stmt = select(*(self.t.c[name] for name in PAGE_COLUMNS))
            if chosen:
                stmt = stmt.where(c.status.in_(list(chosen)))
            for name in ("queue", "kind", "owner_id"):
                if given[name] is not None:
                    stmt = stmt.where(c[name] == param(name, Text()))
            if created_from is not None:
                stmt = stmt.where(c.created_at >= param("created_from", UTCDateTime()))
            if created_to is not None:
                stmt = stmt.where(c.created_at < param("created_to", UTCDateTime()))
            if after is not None:
                # (created_at, id) < (at, id): written so that the first condition bounds
                # a scan of the creation-time index, however deep the page.
                at = param("after_at", UTCDateTime())
                stmt = stmt.where(
                    c.created_at <= at, or_(c.created_at < at, c.id < param("after_id", Uuid()))
                )
            return stmt.order_by(c.created_at.desc(), c.id.desc()).limit(param("limit", Integer()))

        params: dict[str, Any] = {"jq_limit": limit}
        params.update({f"jq_{k}": v for k, v in given.items() if v is not None})
        if after is not None:
            params["jq_after_at"], params["jq_after_id"] = after
        return Query(self.once(shape, build), params)

    def retry_many(self, job_ids: Sequence[UUID]) -> Query:
        """An operator's retry (`Managing.retry`) of each of ``job_ids`` that is failed,
        cancelled or expired, in one statement; the rows it moved."""

        def build() -> Any:
            c = self.t.c
            ids = bindparam("jq_job_ids", type_=Uuid(), expanding=True)
            return (
                update(self.t)
                .where(c.id.in_(ids), self.retryable())
                .values(**self.retried())
                .returning(*self.columns)
            )

        return Query(self.once("admin_retry_many", build), {"jq_job_ids": list(job_ids)})
