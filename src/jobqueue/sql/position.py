"""The statements behind a job's place in the line (`JobQueue.position`): each one reads
a bounded number of index entries, however long the line and however many jobs the table
keeps, so that many clients polling their jobs' positions stay cheap.

- `position_job`: the job itself (by primary key) and the database clock;
- `jobs_ahead`: the jobs the claim takes before it (`jobqueue.sql.claim`: pending jobs in
  the line of the workers' queues, by priority descending, then turn, then id), counted
  up to a limit. Each queue's part is three range scans of the claim index (a higher
  priority; the same priority and an earlier turn; the same turn and a smaller id), each
  stopping at the limit, so the count reads at most three times the limit per queue;
- `recent_runs`: the latest completed runs of a kind (``<table>_done_idx``);
- `running_in`: the jobs running in the workers' queues, when each started.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Float, Integer, Text, Uuid, func, literal_column, select, union_all

from .common import StatementsBase, param
from .dialect import DbNow
from .fair import in_line
from .steps import Query


class Positioning(StatementsBase):
    """The reads of a job's place in the line."""

    def position_job(self, job_id: UUID, owner_id: str | None = None) -> Query:
        """What a position needs of the job (with ``owner_id``, only when it is theirs),
        and the database clock's ``now``."""
        c = self.t.c
        return self.one_job(
            "position_job",
            lambda: (
                c.id,
                c.status,
                c.queue,
                c.kind,
                c.priority,
                c.turn,
                c.run_at,
                c.started_at,
                DbNow().label("now"),
            ),
            job_id,
            owner_id,
        )

    def jobs_ahead(
        self, queues: tuple[str, ...], priority: int, turn: float, job_id: UUID, limit: int
    ) -> Query:
        """How many jobs of ``queues`` are in the line ahead of a job at ``(priority, turn,
        job_id)``, counted up to ``limit`` per range scan (one row, ``ahead``: more than
        ``limit`` means at least that many)."""

        def build() -> Any:
            c = self.t.c
            n = param("limit", Integer())
            p = param("priority", Integer())
            t = param("turn", Float())
            me = param("job_id", Uuid())
            parts: list[Any] = []
            for i in range(len(queues)):
                q = c.queue == param(f"queue_{i}", Text())
                for where, order in (
                    ((c.priority > p,), (c.priority.desc(), c.turn, c.id)),
                    ((c.priority == p, c.turn < t), (c.turn, c.id)),
                    ((c.priority == p, c.turn == t, c.id < me), (c.id,)),
                ):
                    scan = (
                        select(c.id)
                        .where(q, in_line(self.t), *where)
                        .order_by(*order)
                        .limit(n)
                        .subquery()
                    )
                    parts.append(select(literal_column("1").label("one")).select_from(scan))
            every = union_all(*parts).subquery("ahead_jobs")
            return select(func.count().label("ahead")).select_from(every)

        params: dict[str, Any] = {
            "jq_limit": limit,
            "jq_priority": priority,
            "jq_turn": turn,
            "jq_job_id": job_id,
        }
        params.update({f"jq_queue_{i}": q for i, q in enumerate(queues)})
        return Query(self.once(("jobs_ahead", len(queues)), build), params)

    def recent_runs(self, kind: str, samples: int) -> Query:
        """The start and end of the latest ``samples`` completed runs of ``kind``, newest
        first (the last attempt of each job: a retried job's earlier ones are not timed)."""

        def build() -> Any:
            c = self.t.c
            return (
                select(c.started_at, c.completed_at)
                .where(
                    c.status == literal_column("'completed'"),
                    c.kind == param("kind", Text()),
                    c.started_at.isnot(None),
                    c.completed_at.isnot(None),
                )
                .order_by(c.completed_at.desc())
                .limit(param("samples", Integer()))
            )

        return Query(self.once("recent_runs", build), {"jq_kind": kind, "jq_samples": samples})

    def running_in(self, queues: tuple[str, ...], limit: int) -> Query:
        """When each job running in ``queues`` started (at most ``limit`` of them), with
        the database clock's ``now``."""

        def build() -> Any:
            c = self.t.c
            return (
                select(c.started_at, DbNow().label("now"))
                .where(
                    c.status == literal_column("'processing'"),
                    c.queue.in_([param(f"queue_{i}", Text()) for i in range(len(queues))]),
                    c.started_at.isnot(None),
                )
                .limit(param("limit", Integer()))
            )

        params: dict[str, Any] = {"jq_limit": limit}
        params.update({f"jq_queue_{i}": q for i, q in enumerate(queues)})
        return Query(self.once(("running_in", len(queues)), build), params)
