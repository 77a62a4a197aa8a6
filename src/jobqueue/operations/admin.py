"""The admin dashboard's operations: the overview, a page of the jobs table, and retrying
many jobs at once; written once for both queues like every operation, with statements
from `jobqueue.sql.admin`.

The records they return live here too: they are the dashboard's view of the table, and
nothing below the queue needs them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..errors import PayloadError
from ..models import Job, Status
from ..sql.admin import MAX_PAGE, THROUGHPUT_MINUTES
from ..sql.statements import Statements
from ..validation import check_int, check_text, parse_job_id, parse_statuses, read_job
from .contract import Access, Steps, operation


@dataclass(frozen=True, slots=True)
class QueueCount:
    """The jobs of one queue in one status, and when the oldest of them was created (for
    ``pending``: when the longest-waiting due job became due, None while none is due)."""

    queue: str
    status: Status
    count: int
    oldest: datetime | None


@dataclass(frozen=True, slots=True)
class Overview:
    """The jobs table at a glance, read at ``now`` (the database clock).

    ``counts``: per queue and status, the jobs and the oldest one's time (`QueueCount`).
    ``completed`` and ``failed`` count the jobs that finished so in each of the last 60
    minutes (by ``completed_at``), oldest minute first (``completed[-1]`` is this minute);
    ``cost_today`` is what the jobs written since the start of today (UTC) cost, per unit.
    """

    now: datetime | None
    counts: list[QueueCount]
    completed: list[int]
    failed: list[int]
    cost_today: dict[str, Decimal]

    def total(self, status: Status | str) -> int:
        """The jobs in ``status``, all queues together."""
        wanted = Status(status)
        return sum(c.count for c in self.counts if c.status is wanted)

    @property
    def oldest_pending(self) -> datetime | None:
        """When the longest-waiting due job (of any queue) became due; None if none is."""
        times = [c.oldest for c in self.counts if c.status is Status.PENDING and c.oldest]
        return min(times, default=None)


@dataclass(frozen=True, slots=True)
class JobSummary:
    """One line of the jobs table: a job without its payload and result."""

    id: uuid.UUID
    queue: str
    kind: str
    status: Status
    owner_id: str | None
    attempts: int
    max_attempts: int
    progress: int
    error: str | None
    cost: Decimal | None
    cost_unit: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of the jobs table, and the keyset of the next one (None: this is the last)."""

    jobs: list[JobSummary]
    after: tuple[datetime, uuid.UUID] | None = None


def _per_minute(rows: Iterable[Any], status: Status) -> list[int]:
    counts = [0] * THROUGHPUT_MINUTES
    for r in rows:
        ago = r["minutes_ago"]
        if r["status"] == status.value and ago is not None and 0 <= ago < THROUGHPUT_MINUTES:
            counts[THROUGHPUT_MINUTES - 1 - int(ago)] += int(r["count"])
    return counts


@operation(Access.READ)
def overview(s: Statements) -> Steps[Overview]:
    """Counts per queue and status, the last hour's finishes per minute, today's costs."""
    counted = yield s.counts()
    finished = yield s.throughput()
    costs = yield s.cost_today()
    return Overview(
        now=counted[0]["now"] if counted else None,
        counts=[
            QueueCount(r["queue"], Status(r["status"]), int(r["count"]), r["oldest"])
            for r in counted
        ],
        completed=_per_minute(finished, Status.COMPLETED),
        failed=_per_minute(finished, Status.FAILED),
        cost_today={
            r["cost_unit"] or "": r["cost"] if r["cost"] is not None else Decimal(0) for r in costs
        },
    )


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
        raise PayloadError(f"{name} must be a timezone-aware datetime")
    return value


@operation(Access.READ)
def job_page(
    s: Statements,
    *,
    status: Status | str | Iterable[Status | str] | None = None,
    queue: str | None = None,
    kind: str | None = None,
    owner_id: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    after: tuple[datetime, object] | None = None,
    limit: int = 50,
) -> Steps[JobPage]:
    """Newest first, up to ``limit`` jobs after the keyset ``after`` that match every
    filter given; the page says where the next one starts."""
    check_int(limit, "limit", 1, MAX_PAGE)
    statuses = None if status is None else parse_statuses(status)
    for name, value in (("queue", queue), ("kind", kind), ("owner_id", owner_id)):
        if value is not None:
            check_text(value, name)
    keyset = None
    if after is not None:
        at = _aware(after[0], "after")
        assert at is not None
        keyset = (at, parse_job_id(after[1]))
    rows = yield s.page(
        statuses=statuses,
        queue=queue,
        kind=kind,
        owner_id=owner_id,
        created_from=_aware(created_from, "created_from"),
        created_to=_aware(created_to, "created_to"),
        after=keyset,
        limit=limit + 1,  # one more says whether a next page exists
    )
    jobs = [_summary(r) for r in rows[:limit]]
    more = len(rows) > limit and jobs
    return JobPage(jobs, (jobs[-1].created_at, jobs[-1].id) if more else None)


def _summary(r: Any) -> JobSummary:
    job_id = r["id"] if isinstance(r["id"], uuid.UUID) else uuid.UUID(str(r["id"]))
    return JobSummary(
        id=job_id,
        queue=r["queue"],
        kind=r["kind"],
        status=Status(r["status"]),
        owner_id=r["owner_id"],
        attempts=int(r["attempts"]),
        max_attempts=int(r["max_attempts"]),
        progress=int(r["progress"] or 0),
        error=r["error"],
        cost=r["cost"],
        cost_unit=r["cost_unit"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        completed_at=r["completed_at"],
    )


@operation(Access.ONE_WRITE)
def retry_many(s: Statements, job_ids: Sequence[object]) -> Steps[list[Job]]:
    """Retry each of ``job_ids`` that is failed, cancelled or expired, in one statement
    (all or none of them, at most `MAX_PAGE`); the jobs retried. The others (running,
    pending, completed, unknown) are left as they are and not in the answer."""
    ids = list(dict.fromkeys(parse_job_id(j) for j in job_ids))
    if len(ids) > MAX_PAGE:
        raise PayloadError(
            f"at most {MAX_PAGE} jobs can be retried at once, not {len(ids)}",
            hint="retry them a page at a time",
        )
    if not ids:
        return []
    rows = yield s.retry_many(ids)
    return [read_job(r) for r in rows]
