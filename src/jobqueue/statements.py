"""Every SQL statement jobqueue runs, built once with SQLAlchemy Core.

`Statements` is bound to one jobs table and one dialect. Its methods return statements and
never touch a connection, so the sync and the async queue run exactly the same SQL, and the
statements can be compiled and EXPLAINed in tests without running them.

Fencing: every write a worker makes to a job it claimed carries ``(id, attempts)`` and
requires ``status = 'processing'``. A worker whose lease was lost (the job was reaped, claimed
again or cancelled) matches no row and so changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Float,
    Insert,
    Integer,
    Select,
    String,
    Table,
    Text,
    Update,
    Uuid,
    and_,
    bindparam,
    case,
    cast,
    column,
    delete,
    func,
    literal,
    literal_column,
    select,
    union_all,
    update,
    values,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import ReturningDelete

from .dialects import DbNow, DbNowPlus, JsonAppend, UTCDateTime, json_type
from .schema import Status, sources_of


def _in(statuses: Sequence[Status]) -> list[str]:
    return [s.value for s in statuses]


class Statements:
    """The statements for one jobs table on one dialect (``postgresql`` or ``sqlite``)."""

    def __init__(self, table: Table, dialect: str) -> None:
        if dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported dialect {dialect!r}")
        self.t = table
        self.dialect = dialect
        self.columns = list(table.c)

    # -- helpers ---------------------------------------------------------------------------

    def _fenced(self, job_id: UUID, attempt: int) -> ColumnElement[bool]:
        c = self.t.c
        return and_(c.id == job_id, c.attempts == attempt, c.status == Status.PROCESSING.value)

    def _error_entry(self, message: ColumnElement[Any] | str) -> JsonAppend:
        """``errors`` with one more ``{attempt, at, error}`` entry for the current attempt."""
        c = self.t.c
        msg = message if isinstance(message, ColumnElement) else cast(literal(message), Text())
        return JsonAppend(
            c.errors,
            literal_column("'attempt'"),
            c.attempts,
            literal_column("'at'"),
            DbNow(),
            literal_column("'error'"),
            msg,
        )

    def _at_least_one_more(self) -> ColumnElement[int]:
        c = self.t.c
        return case((c.max_attempts > c.attempts, c.max_attempts), else_=c.attempts + 1)

    # -- writing new jobs ------------------------------------------------------------------

    def insert_many(self) -> Insert:
        """Insert jobs, executed with one parameter set per job (see `NewJob.to_row`).

        ``run_at`` is the caller's time when given, else the database clock plus the delay.
        Rows whose (queue, idempotency_key) already exists are skipped: the caller learns
        which from RETURNING and reads the existing jobs with `by_idempotency_keys`.
        """
        c = self.t.c
        ins = (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(self.t)
        run_at = func.coalesce(
            bindparam("run_at_value", type_=UTCDateTime()),
            DbNowPlus(bindparam("delay_seconds", type_=Float())),
        )
        stmt = ins.values(
            id=bindparam("id", type_=Uuid()),
            queue=bindparam("queue", type_=String()),
            kind=bindparam("kind", type_=String()),
            payload=bindparam("payload", type_=json_type()),
            priority=bindparam("priority", type_=Integer()),
            max_attempts=bindparam("max_attempts", type_=Integer()),
            owner_id=bindparam("owner_id", type_=Text()),
            idempotency_key=bindparam("idempotency_key", type_=Text()),
            run_at=run_at,
        ).on_conflict_do_nothing(
            index_elements=[c.queue, c.idempotency_key],
            index_where=c.idempotency_key.isnot(None),
        )
        return stmt.returning(*self.columns, sort_by_parameter_order=True)

    def by_idempotency_keys(self, queue: str, keys: Sequence[str]) -> Select[Any]:
        c = self.t.c
        return select(*self.columns).where(c.queue == queue, c.idempotency_key.in_(list(keys)))

    # -- claiming ----------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease: float,
        queues: Sequence[str] | None,
        kinds: Sequence[str] | None,
    ) -> Update:
        """Take up to ``limit`` due jobs, highest priority then oldest first.

        Pending jobs come from the partial claim index. Processing jobs whose lease expired
        are claimable too (their lost attempt is recorded in ``errors``); those out of
        attempts are left to `reap`, which fails them. PostgreSQL locks candidates with
        ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never wait on each other; SQLite
        runs the statement under its single write lock, which makes it atomic.
        """
        c = self.t.c
        now = DbNow()
        filters: list[ColumnElement[bool]] = []
        if queues is not None:
            filters.append(c.queue.in_(list(queues)))
        if kinds is not None:
            filters.append(c.kind.in_(list(kinds)))
        pending = (
            select(c.id)
            .where(c.status == Status.PENDING.value, c.run_at <= now, *filters)
            .order_by(c.priority.desc(), c.run_at, c.id)
            .limit(limit)
        )
        expired = (
            select(c.id)
            .where(
                c.status == Status.PROCESSING.value,
                c.lease_expires_at < now,
                c.attempts < c.max_attempts,
                *filters,
            )
            .order_by(c.lease_expires_at)
            .limit(limit)
        )
        p: Any
        e: Any
        if self.dialect == "postgresql":
            # Lock candidates without waiting for rows another claimer holds.
            p = pending.with_for_update(skip_locked=True).cte("pending_jobs")
            e = expired.with_for_update(skip_locked=True).cte("expired_jobs")
        else:
            p, e = pending.subquery("pending_jobs"), expired.subquery("expired_jobs")
        picked = union_all(select(p.c.id), select(e.c.id)).subquery("picked")
        where = c.id.in_(select(picked.c.id).limit(limit))
        held_by = func.coalesce(c.locked_by, literal_column("'unknown worker'"))
        lost = self._error_entry(
            literal_column("'lease expired while held by '", Text()).concat(held_by)
        )
        return (
            update(self.t)
            .where(where)
            .values(
                status=Status.PROCESSING.value,
                attempts=c.attempts + 1,
                locked_by=worker_id,
                started_at=now,
                lease_expires_at=DbNowPlus(lease),
                updated_at=now,
                progress=case((c.status == Status.PROCESSING.value, 0), else_=c.progress),
                errors=case((c.status == Status.PROCESSING.value, lost), else_=c.errors),
            )
            .returning(*self.columns)
        )

    # -- a worker's writes to the jobs it holds (all fenced) -----------------------------------

    def heartbeat(self, job_id: UUID, attempt: int, lease: float) -> Update:
        c = self.t.c
        return (
            update(self.t)
            .where(self._fenced(job_id, attempt))
            .values(lease_expires_at=DbNowPlus(lease), updated_at=DbNow())
            .returning(c.lease_expires_at)
        )

    def heartbeat_many(self, ids: Sequence[UUID], lease: float, worker_id: str) -> Update:
        """Extend the leases of every job this worker holds, in one statement.

        Fenced by ``locked_by`` and status: rows reaped or cancelled since simply do not
        match, and their ids are missing from RETURNING.
        """
        c = self.t.c
        return (
            update(self.t)
            .where(
                c.id.in_(list(ids)),
                c.locked_by == worker_id,
                c.status == Status.PROCESSING.value,
            )
            .values(lease_expires_at=DbNowPlus(lease), updated_at=DbNow())
            .returning(c.id, c.attempts)
        )

    def set_progress(self, job_id: UUID, attempt: int, percent: int, message: str | None) -> Update:
        return (
            update(self.t)
            .where(self._fenced(job_id, attempt))
            .values(progress=percent, progress_message=message, updated_at=DbNow())
            .returning(self.t.c.id)
        )

    def remember(self, job_id: UUID, attempt: int, remote_task_id: str) -> Update:
        return (
            update(self.t)
            .where(self._fenced(job_id, attempt))
            .values(remote_task_id=remote_task_id, updated_at=DbNow())
            .returning(self.t.c.id)
        )

    def complete(self, job_id: UUID, attempt: int, result: Any, result_url: str | None) -> Update:
        now = DbNow()
        return (
            update(self.t)
            .where(self._fenced(job_id, attempt))
            .values(
                status=Status.COMPLETED.value,
                result=result,
                result_url=result_url,
                error=None,
                progress=100,
                lease_expires_at=None,
                completed_at=now,
                updated_at=now,
            )
            .returning(*self.columns)
        )

    def complete_many(self, items: Sequence[Mapping[str, Any]]) -> Update:
        """Complete many held jobs in one statement (the worker's batched completer).

        ``items`` are ``{"id", "attempt", "result", "result_url"}``. The batch travels as a
        VALUES list joined to the table; the fencing condition is the same as `complete`,
        so RETURNING tells which jobs were fenced off (those ids are missing).
        """
        c = self.t.c
        batch = (
            values(
                column("job_id", Uuid()),
                column("attempt", Integer()),
                column("result", json_type()),
                column("result_url", Text()),
                name="batch",
            )
            .data([(i["id"], i["attempt"], i["result"], i["result_url"]) for i in items])
            .cte("batch")
        )
        now = DbNow()
        return (
            update(self.t)
            .where(
                c.id == batch.c.job_id,
                c.attempts == batch.c.attempt,
                c.status == Status.PROCESSING.value,
            )
            .values(
                status=Status.COMPLETED.value,
                # A batch of only NULL results makes PostgreSQL type the VALUES column text.
                result=cast(batch.c.result, json_type())
                if self.dialect == "postgresql"
                else batch.c.result,
                result_url=batch.c.result_url,
                error=None,
                progress=100,
                lease_expires_at=None,
                completed_at=now,
                updated_at=now,
            )
            .returning(c.id)
        )

    def fail(self, job_id: UUID, attempt: int, error: str, retry_in: float | None) -> Update:
        """Record a failed attempt: back to ``pending`` after ``retry_in`` seconds, or, when
        ``retry_in`` is None, ``failed`` for good. The error joins the ``errors`` history."""
        now = DbNow()
        common: dict[str, Any] = {
            "error": error,
            "errors": self._error_entry(cast(literal(error), Text())),
            "lease_expires_at": None,
            "updated_at": now,
        }
        if retry_in is None:
            moves: dict[str, Any] = {"status": Status.FAILED.value, "completed_at": now}
        else:
            moves = {
                "status": Status.PENDING.value,
                "run_at": DbNowPlus(retry_in),
                "locked_by": None,
                "progress": 0,
                "max_attempts": self._at_least_one_more(),
            }
        return (
            update(self.t)
            .where(self._fenced(job_id, attempt))
            .values(**common, **moves)
            .returning(*self.columns)
        )

    def release(self, job_id: UUID, attempt: int, reason: str) -> Update:
        """Give a held job back to the queue at once, without spending an attempt.

        ``attempts`` never goes down (it is the fencing token), so ``max_attempts`` goes up
        by one instead.
        """
        c = self.t.c
        now = DbNow()
        return (
            update(self.t)
            .where(self._fenced(job_id, attempt))
            .values(
                status=Status.PENDING.value,
                run_at=now,
                locked_by=None,
                lease_expires_at=None,
                max_attempts=c.max_attempts + 1,
                errors=self._error_entry(cast(literal(reason), Text())),
                updated_at=now,
            )
            .returning(*self.columns)
        )

    def fence_state(self, job_id: UUID) -> Select[Any]:
        """What a fenced write that matched nothing needs to explain itself."""
        c = self.t.c
        return select(c.status, c.attempts, c.locked_by).where(c.id == job_id)

    # -- anyone's moves --------------------------------------------------------------------

    def cancel(self, job_id: UUID, owner_id: str | None = None) -> Update:
        c = self.t.c
        now = DbNow()
        where = [c.id == job_id, c.status.in_(_in(sources_of(Status.CANCELLED)))]
        if owner_id is not None:
            where.append(c.owner_id == owner_id)
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

    def retry(self, job_id: UUID) -> Update:
        """An operator's retry of a ``failed`` or ``cancelled`` job: one more attempt, now."""
        c = self.t.c
        now = DbNow()
        final_sources = [s for s in sources_of(Status.PENDING) if s.is_final]
        return (
            update(self.t)
            .where(c.id == job_id, c.status.in_(_in(final_sources)))
            .values(
                status=Status.PENDING.value,
                run_at=now,
                max_attempts=self._at_least_one_more(),
                locked_by=None,
                lease_expires_at=None,
                completed_at=None,
                progress=0,
                progress_message=None,
                updated_at=now,
            )
            .returning(*self.columns)
        )

    def reap(self) -> Update:
        """Return jobs whose lease expired to ``pending``, or fail them when out of attempts."""
        c = self.t.c
        now = DbNow()
        spent = c.attempts >= c.max_attempts
        held_by = func.coalesce(c.locked_by, literal_column("'unknown worker'"))
        message = literal_column("'lease expired while held by '", Text()).concat(held_by)
        return (
            update(self.t)
            .where(c.status == Status.PROCESSING.value, c.lease_expires_at < now)
            .values(
                status=case((spent, Status.FAILED.value), else_=Status.PENDING.value),
                completed_at=case((spent, now), else_=None),
                error=message,
                errors=self._error_entry(message),
                locked_by=None,
                lease_expires_at=None,
                run_at=now,
                updated_at=now,
            )
            .returning(c.id, c.status)
        )

    # -- reading ---------------------------------------------------------------------------

    def get(self, job_id: UUID, owner_id: str | None = None) -> Select[Any]:
        c = self.t.c
        stmt = select(*self.columns).where(c.id == job_id)
        if owner_id is not None:
            stmt = stmt.where(c.owner_id == owner_id)
        return stmt

    def list(
        self,
        *,
        owner_id: str | None,
        statuses: Sequence[Status] | None,
        queue: str | None,
        kind: str | None,
        since: datetime | float | None,
        limit: int,
    ) -> Select[Any]:
        """Newest first. ``since`` is a time, or a number of seconds back from now."""
        c = self.t.c
        stmt = select(*self.columns)
        if owner_id is not None:
            stmt = stmt.where(c.owner_id == owner_id)
        if statuses:
            stmt = stmt.where(c.status.in_(_in(statuses)))
        if queue is not None:
            stmt = stmt.where(c.queue == queue)
        if kind is not None:
            stmt = stmt.where(c.kind == kind)
        if isinstance(since, datetime):
            stmt = stmt.where(c.created_at >= since)
        elif since is not None:
            stmt = stmt.where(c.created_at >= DbNowPlus(-since))
        return stmt.order_by(c.created_at.desc(), c.id.desc()).limit(limit)

    def stats(self, since_seconds: float) -> Select[Any]:
        """The seed's statistics: jobs per status and their mean creation-to-finish time."""
        c = self.t.c
        if self.dialect == "postgresql":
            seconds: ColumnElement[Any] = func.extract("epoch", c.completed_at - c.created_at)
        else:
            seconds = (func.julianday(c.completed_at) - func.julianday(c.created_at)) * 86400.0
        return (
            select(
                c.status,
                func.count().label("count"),
                func.avg(seconds).label("avg_duration_sec"),
            )
            .where(c.created_at > DbNowPlus(-since_seconds))
            .group_by(c.status)
            .order_by(c.status)
        )

    def prune(self, older_than_seconds: float, statuses: Sequence[Status]) -> ReturningDelete[Any]:
        c = self.t.c
        return (
            delete(self.t)
            .where(
                c.status.in_(_in(statuses)),
                c.completed_at < DbNowPlus(-older_than_seconds),
            )
            .returning(c.id)
        )

    def count_by_status(self) -> Select[Any]:
        c = self.t.c
        return select(c.status, func.count().label("count")).group_by(c.status)
