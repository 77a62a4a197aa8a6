"""The statements anyone may run on any job: cancel, retry, reap, prune, and the reads
(one job, a listing, the statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Text,
    Uuid,
    and_,
    case,
    delete,
    func,
    literal_column,
    or_,
    select,
    update,
)

from ..models import Status, sources_of
from .budgets import Budgeting
from .common import param, status_values
from .dialect import DbNow, DbNowPlus, Money, UTCDateTime
from .steps import Query

#: How many jobs past their start deadline one `expire` moves to ``expired`` at most.
EXPIRY_BATCH = 1000


class Managing(Budgeting):
    """Anyone's moves of a job, and reading jobs."""

    def cancel(
        self, job_id: UUID, owner_id: str | None = None, *, pending_only: bool = False
    ) -> Query:
        """Cancel a job that may still move to ``cancelled`` (pending or processing; with
        ``pending_only``, only one no claim has taken).

        Only the statuses the table of moves allows are matched, so a finished job is never
        reopened; with ``owner_id`` only that owner's job matches (an end user's cancel).
        A running job's worker learns of it at its next fenced write or its cancel check.
        """
        by_owner = owner_id is not None
        sources = (Status.PENDING,) if pending_only else sources_of(Status.CANCELLED)

        def build() -> Any:
            c = self.t.c
            now = DbNow()
            where = [
                c.id == param("job_id", Uuid()),
                c.status.in_(status_values(sources)),
            ]
            if by_owner:
                where.append(c.owner_id == param("owner_id", Text()))
            return (
                update(self.t)
                .where(*where)
                .values(
                    status=Status.CANCELLED.value,
                    lease_expires_at=None,
                    completed_at=now,
                    updated_at=now,
                )
                .returning(*self.columns)
            )

        params: dict[str, Any] = {"jq_job_id": job_id}
        if by_owner:
            params["jq_owner_id"] = owner_id
        return Query(self.once(("cancel", by_owner, pending_only), build), params)

    def retry(self, job_id: UUID) -> Query:
        """An operator's retry of a ``failed``, ``cancelled`` or ``expired`` job: one more
        attempt, now. A start deadline still ahead stays; one that has passed (an expired
        job's) is dropped, so the retried job runs instead of expiring again."""

        def build() -> Any:
            c = self.t.c
            return (
                update(self.t)
                .where(c.id == param("job_id", Uuid()), self.retryable())
                .values(**self.retried())
                .returning(*self.columns)
            )

        return Query(self.once("retry", build), {"jq_job_id": job_id})

    def retryable(self) -> ColumnElement[bool]:
        """The statuses an operator's retry takes a job from: the final ones the table of
        moves lets go back to ``pending``."""
        final_sources = [s for s in sources_of(Status.PENDING) if s.is_final]
        return self.t.c.status.in_(status_values(final_sources))

    def retried(self) -> dict[str, Any]:
        """What an operator's retry writes (see `retry`)."""
        c = self.t.c
        now = DbNow()
        return {
            "status": Status.PENDING.value,
            "turn": None,  # enters the line anew (`jobqueue.sql.fair`)
            "run_at": now,
            "max_attempts": self.at_least_one_more(),
            "locked_by": None,
            "lease_expires_at": None,
            "completed_at": None,
            "start_by": case((c.start_by > now, c.start_by), else_=None),
            "updated_at": now,
        }

    def expire(self) -> Query:
        """Move pending jobs whose start deadline has passed (by the database clock) to
        ``expired``, up to `EXPIRY_BATCH` of them, earliest deadline first, through the
        deadline index. On PostgreSQL rows another transaction holds (a claim, a cancel)
        are skipped: a claim will not take them, and the next round sees them again."""

        def build() -> Any:
            c = self.t.c
            now = DbNow()
            # 'pending' written into the SQL: SQLite uses the partial index only then.
            due = (
                select(c.id)
                .where(
                    c.status == literal_column("'pending'"),
                    c.start_by.isnot(None),
                    c.start_by <= now,
                )
                .order_by(c.start_by)
                .limit(EXPIRY_BATCH)
            )
            if self.dialect == "postgresql":
                due = due.with_for_update(skip_locked=True)
            return (
                update(self.t)
                .where(c.id.in_(due.scalar_subquery()), c.status == Status.PENDING.value)
                .values(status=Status.EXPIRED.value, completed_at=now, updated_at=now)
                .returning(*self.columns)
            )

        return Query(self.once("expire", build), None)

    def reap(self) -> Query:
        """Return jobs whose lease expired to ``pending`` in their place in line (their
        ``run_at`` kept), or fail them when out of attempts."""

        def build() -> Any:
            c = self.t.c
            now = DbNow()
            spent = c.attempts >= c.max_attempts
            message = self.lost_lease_message()
            return (
                update(self.t)
                .where(c.status == Status.PROCESSING.value, c.lease_expires_at < now)
                .values(
                    status=case((spent, Status.FAILED.value), else_=Status.PENDING.value),
                    completed_at=case((spent, now), else_=None),
                    error=message,
                    errors=self.error_entry(message),
                    locked_by=None,
                    lease_expires_at=None,
                    run_at=self.place_in_line(),
                    updated_at=now,
                )
                .returning(c.id, c.status)
            )

        return Query(self.once("reap", build), None)

    # -- reading ---------------------------------------------------------------------------

    def get(self, job_id: UUID, owner_id: str | None = None) -> Query:
        """One job by id; with ``owner_id`` only when it belongs to that owner, so an end
        user cannot read another user's job by guessing its id."""
        return self.one_job("get", lambda: self.columns, job_id, owner_id)

    def list(
        self,
        *,
        owner_id: str | None,
        statuses: Sequence[Status] | None,
        queue: str | None,
        kind: str | None,
        since: datetime | float | None,
        limit: int,
    ) -> Query:
        """Newest first. ``since`` is a time, or a number of seconds back from now."""
        chosen = tuple(status_values(statuses)) if statuses else None
        since_kind = None if since is None else "at" if isinstance(since, datetime) else "ago"
        shape = ("list", owner_id is not None, chosen, queue is not None, kind is not None)

        def build() -> Any:
            c = self.t.c
            stmt = select(*self.columns)
            if owner_id is not None:
                stmt = stmt.where(c.owner_id == param("owner_id", Text()))
            if chosen:
                stmt = stmt.where(c.status.in_(list(chosen)))
            if queue is not None:
                stmt = stmt.where(c.queue == param("queue", Text()))
            if kind is not None:
                stmt = stmt.where(c.kind == param("kind", Text()))
            if since_kind == "at":
                stmt = stmt.where(c.created_at >= param("since", UTCDateTime()))
            elif since_kind == "ago":
                stmt = stmt.where(c.created_at >= DbNowPlus(param("since", Float())))
            return stmt.order_by(c.created_at.desc(), c.id.desc()).limit(param("limit", Integer()))

        params: dict[str, Any] = {"jq_limit": limit}
        for name, value in (("owner_id", owner_id), ("queue", queue), ("kind", kind)):
            if value is not None:
                params[f"jq_{name}"] = value
        if since_kind == "at":
            params["jq_since"] = since
        elif since_kind == "ago":
            assert not isinstance(since, datetime) and since is not None
            params["jq_since"] = -since
        return Query(self.once((*shape, since_kind), build), params)

    #: What `stats` may group its lines by, besides the status.
    STATS_BY = ("kind", "owner")

    def stats(
        self, since_seconds: float, by: str | None = None, owner_id: str | None = None
    ) -> Query:
        """The statistics of the jobs created in the last ``since_seconds``: per status (and
        ``by`` kind or owner) and cost unit, the jobs, their mean creation-to-finish time,
        the sum of their costs, and how many of them cost money (``charged``). With
        ``owner_id``, only that owner's jobs (an end user's own spending)."""
        if by is not None and by not in self.STATS_BY:
            raise ValueError(f"stats group by one of {self.STATS_BY}, not {by!r}")
        mine = owner_id is not None

        def build() -> Any:
            c = self.t.c
            if self.dialect == "postgresql":
                # Times at infinity (a client may store them) cannot be subtracted: such a
                # job counts, its duration does not.
                finite = and_(func.isfinite(c.completed_at), func.isfinite(c.created_at))
                seconds: ColumnElement[Any] = case(
                    (finite, func.extract("epoch", c.completed_at - c.created_at))
                )
            else:
                seconds = (func.julianday(c.completed_at) - func.julianday(c.created_at)) * 86400.0
            group = [] if by is None else [c.kind if by == "kind" else c.owner_id]
            charged = case((c.cost > literal_column("0"), literal_column("1")), else_=0)
            stmt = select(
                c.status,
                *(col.label("grouped") for col in group),
                c.cost_unit,
                func.count().label("count"),
                func.avg(seconds).label("avg_duration_sec"),
                func.sum(c.cost, type_=Money()).label("cost"),
                func.sum(charged, type_=Integer()).label("charged"),
            ).where(c.created_at > DbNowPlus(param("back", Float())))
            if mine:
                stmt = stmt.where(c.owner_id == param("owner_id", Text()))
            return stmt.group_by(c.status, *group, c.cost_unit).order_by(
                c.status, *group, c.cost_unit
            )

        params: dict[str, Any] = {"jq_back": -since_seconds}
        if mine:
            params["jq_owner_id"] = owner_id
        return Query(self.once(("stats", by, mine), build), params)

    def prune(self, older_than_seconds: float, statuses: Sequence[Status]) -> Query:
        """Delete jobs in the given (final) statuses that finished more than
        ``older_than_seconds`` ago by the database clock; RETURNING says how many.

        The age is measured from ``completed_at``, not creation, so a job that ran for days
        is kept for the full retention period after it ended. Jobs that still count against
        their owner's budget are kept (`Budgeting.still_counted`).
        """
        chosen = tuple(status_values(statuses))

        def build() -> Any:
            c = self.t.c
            return (
                delete(self.t)
                .where(
                    c.status.in_(list(chosen)),
                    c.completed_at < DbNowPlus(param("back", Float())),
                    # What still counts against a budget stays: its owner's spending
                    # would otherwise shrink (`jobqueue.sql.budgets`).
                    or_(c.owner_id.is_(None), ~self.still_counted()),
                )
                .returning(c.id)
            )

        return Query(self.once(("prune", chosen), build), {"jq_back": -older_than_seconds})
