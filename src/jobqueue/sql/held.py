"""The statements a worker runs on the jobs it holds: heartbeats, progress, the provider's
task id, completing, failing and releasing a job. Every one is fenced (`fence`): it
matches only the job in the claim the worker holds, so a worker whose lease was lost (the
job was reaped, claimed again, released or cancelled) changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    Text,
    Uuid,
    cast,
    select,
    update,
)
from sqlalchemy.types import TypeEngine

from ..models import Status
from .common import (
    HELD_COLUMNS,
    StatementsBase,
    batch_json,
    fence_params,
    json_param,
    json_rows,
    param,
    unnest,
)
from .dialect import DbNow, DbNowPlus, Money
from .steps import Direct, Query


class HeldJobs(StatementsBase):
    """A worker's writes to the jobs it holds (all fenced)."""

    def heartbeat(
        self, job_id: UUID, attempt: int, started: datetime | None, lease: float
    ) -> Query:
        def build() -> Any:
            c = self.t.c
            return (
                update(self.t)
                .where(self.fence())
                .values(lease_expires_at=DbNowPlus(param("lease", Float())), updated_at=DbNow())
                .returning(c.lease_expires_at)
            )

        params = fence_params(job_id, attempt, started, jq_lease=lease)
        return Query(self.once("heartbeat", build), params)

    def heartbeat_many(
        self, worker_id: str, held: Sequence[tuple[UUID, int, datetime | None]], lease: float
    ) -> Direct:
        """Extend the leases of the jobs a worker holds, ``(id, attempt, started_at)`` of
        each claim, in one statement (a hot one: every busy worker's, several times a
        lease).

        Fenced like every other write by the claim and status, and by ``locked_by``: a job
        reaped, cancelled, released or claimed again since (even by this same worker) does
        not match, and its id is missing from RETURNING. On PostgreSQL the claims travel as
        three ``unnest``\\ed arrays (one cached statement); on SQLite as VALUES.
        """
        if self.dialect == "postgresql":
            params = {
                "jq_ids": [job_id for job_id, _, _ in held],
                "jq_attempts": [attempt for _, attempt, _ in held],
                "jq_started": [started for _, _, started in held],
                "jq_lease": lease,
                "jq_worker_id": worker_id,
            }
            arrays: list[tuple[str, str, TypeEngine[Any]]] = [
                ("job_id", "ids", Uuid()),
                ("attempt", "attempts", Integer()),
                ("started", "started", DateTime(timezone=True)),
            ]
            stmt = self.once(
                "heartbeat_many_pg", lambda: self._heartbeat_from(unnest(arrays, "batch"))
            )
            return Direct(stmt, params, self._heartbeat_returned())
        stmt = self.once(
            "heartbeat_many_sqlite",
            lambda: self._heartbeat_from(json_rows(HELD_COLUMNS, "batch")),
        )
        params = {"jq_batch": batch_json(held), "jq_lease": lease, "jq_worker_id": worker_id}
        return Direct(stmt, params, self._heartbeat_returned())

    def _heartbeat_returned(self) -> dict[str, TypeEngine[Any]]:
        c = self.t.c
        return self.once(
            "heartbeat_returned", lambda: {"id": c.id.type, "attempts": c.attempts.type}
        )

    def _heartbeat_from(self, batch: Any) -> Any:
        c = self.t.c
        return (
            update(self.t)
            .where(
                self.fence(batch),
                c.locked_by == param("worker_id", Text()),
            )
            .values(lease_expires_at=DbNowPlus(param("lease", Float())), updated_at=DbNow())
            .returning(c.id, c.attempts)
        )

    def set_progress(
        self,
        job_id: UUID,
        attempt: int,
        started: datetime | None,
        percent: int,
        message: str | None,
    ) -> Query:
        def build() -> Any:
            return (
                update(self.t)
                .where(self.fence())
                .values(
                    progress=param("percent", Integer()),
                    progress_message=param("message", Text()),
                    updated_at=DbNow(),
                )
                .returning(self.t.c.id)
            )

        params = fence_params(job_id, attempt, started, jq_percent=percent, jq_message=message)
        return Query(self.once("set_progress", build), params)

    def save_remote_task_id(
        self, job_id: UUID, attempt: int, started: datetime | None, remote_task_id: str
    ) -> Query:
        def build() -> Any:
            return (
                update(self.t)
                .where(self.fence())
                .values(remote_task_id=param("task_id", Text()), updated_at=DbNow())
                .returning(self.t.c.id)
            )

        params = fence_params(job_id, attempt, started, jq_task_id=remote_task_id)
        return Query(self.once("save_remote_task_id", build), params)

    def complete(
        self,
        job_id: UUID,
        attempt: int,
        started: datetime | None,
        result_json: str | None,
        result_url: str | None,
        cost: Decimal | None = None,
        cost_unit: str | None = None,
    ) -> Query:
        """Complete a held job; ``result_json`` is the result as JSON text (None: no result),
        ``cost`` what the attempt cost (`added_cost`)."""

        def build() -> Any:
            now = DbNow()
            return (
                update(self.t)
                .where(self.fence())
                .values(
                    status=Status.COMPLETED.value,
                    result=json_param("result", self.dialect),
                    result_url=param("result_url", Text()),
                    **self._cost_params(),
                    error=None,
                    progress=100,
                    lease_expires_at=None,
                    completed_at=now,
                    updated_at=now,
                )
                .returning(*self.columns)
            )

        params = fence_params(
            job_id,
            attempt,
            started,
            jq_result=result_json,
            jq_result_url=result_url,
            jq_cost=cost,
            jq_cost_unit=cost_unit,
        )
        return Query(self.once("complete", build), params)

    def _cost_params(self) -> dict[str, Any]:
        return self.added_cost(
            cast(param("cost", Money()), Money()), cast(param("cost_unit", Text()), Text())
        )

    def fail(
        self,
        job_id: UUID,
        attempt: int,
        started: datetime | None,
        error: str,
        retry_in: float | None,
        cost: Decimal | None = None,
        cost_unit: str | None = None,
    ) -> Query:
        """Record a failed attempt: back to ``pending`` after ``retry_in`` seconds, or, when
        ``retry_in`` is None, ``failed`` for good. The error joins the ``errors`` history;
        what the attempt cost, if anything, is added to the job's cost (`added_cost`)."""
        retrying = retry_in is not None

        def build() -> Any:
            now = DbNow()
            message = param("error", Text())
            common: dict[str, Any] = {
                "error": message,
                "errors": self.error_entry(cast(message, Text())),
                "lease_expires_at": None,
                "updated_at": now,
                **self._cost_params(),
            }
            if not retrying:
                moves: dict[str, Any] = {"status": Status.FAILED.value, "completed_at": now}
            else:
                moves = {
                    "status": Status.PENDING.value,
                    "run_at": DbNowPlus(param("retry_in", Float())),
                    # Out of the line until due (`jobqueue.sql.fair`).
                    "turn": None,
                    "locked_by": None,
                    "max_attempts": self.at_least_one_more(),
                }
            return (
                update(self.t)
                .where(self.fence())
                .values(**common, **moves)
                .returning(*self.columns)
            )

        params = fence_params(
            job_id, attempt, started, jq_error=error, jq_cost=cost, jq_cost_unit=cost_unit
        )
        if retrying:
            params["jq_retry_in"] = retry_in
        return Query(self.once(("fail", retrying), build), params)

    def release(
        self,
        job_id: UUID,
        attempt: int,
        started: datetime | None,
        reason: str,
        after: float | None = None,
    ) -> Query:
        """Give a held job back to the queue without spending an attempt: at once, in its
        place in line, or (``after`` seconds) out of the line until then, when it enters
        it again (`jobqueue.sql.fair`). Its ``attempts`` go back down by one
        (``max_attempts`` stays) and its progress starts over. ``started_at`` stays: the
        next claim starts later than it (see `claim`), so the fence still tells this claim
        from the next one with the same attempt number.
        """
        later = after is not None

        def build() -> Any:
            c = self.t.c
            now = DbNow()
            when: dict[str, Any] = (
                {"run_at": DbNowPlus(param("after", Float())), "turn": None}
                if later
                else {"run_at": self.place_in_line()}
            )
            return (
                update(self.t)
                .where(self.fence())
                .values(
                    status=Status.PENDING.value,
                    **when,
                    locked_by=None,
                    lease_expires_at=None,
                    attempts=c.attempts - 1,
                    progress=0,
                    progress_message=None,
                    errors=self.error_entry(cast(param("reason", Text()), Text())),
                    updated_at=now,
                )
                .returning(*self.columns)
            )

        params = fence_params(job_id, attempt, started, jq_reason=reason)
        if later:
            params["jq_after"] = after
        return Query(self.once(("release", later), build), params)

    def fence_state(self, job_id: UUID) -> Query:
        """What a fenced write that matched nothing needs to explain itself."""

        def build() -> Any:
            c = self.t.c
            return select(c.status, c.attempts, c.started_at, c.locked_by).where(
                c.id == param("job_id", Uuid())
            )

        return Query(self.once("fence_state", build), {"jq_job_id": job_id})
