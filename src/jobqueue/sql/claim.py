"""The statements of a worker's loop: claiming jobs, and writing a batch of completed
jobs (alone, or with the claim of their replacements in the same statement)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Float,
    Integer,
    Numeric,
    Text,
    Uuid,
    any_,
    case,
    cast,
    column,
    func,
    literal,
    literal_column,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import TypeEngine

from ..models import COST_PLACES, Status
from .common import (
    COMPLETION_COLUMNS,
    batch_json,
    filter_params,
    json_rows,
    param,
)
from .dialect import CommitUnflushed, DbNow, to_micros
from .fair import in_line
from .limits import Limiting
from .steps import Direct

#: The columns of a PostgreSQL completion batch (`completion_batch`), with their types.
BATCH_COLUMNS: list[tuple[str, TypeEngine[Any]]] = [
    ("job_id", Uuid()),
    ("attempt", Integer()),
    ("started", DateTime(timezone=True)),
    ("result", Text()),
    ("result_url", Text()),
    ("cost", Numeric(20, COST_PLACES)),
    ("cost_unit", Text()),
]

_ENCODER = json.JSONEncoder(separators=(",", ":"))


def completion_batch(items: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """A completion batch as the one JSON parameter `Claiming._complete_json` reads: an
    array of objects, one per job, ids and times as PostgreSQL reads them back exactly (a
    start time to the microsecond, as the fence compares it).

    One text parameter instead of an array per column: psycopg adapts an array element by
    element in Python, and five arrays cost more client time than the rest of the batch's
    statement; the JSON encoder is C.
    """
    return {
        "jq_batch": _ENCODER.encode(
            [
                {
                    "job_id": str(i["id"]),
                    "attempt": i["attempt"],
                    "started": None if i["started"] is None else i["started"].isoformat(),
                    "result": i["result"],
                    "result_url": i["result_url"],
                    # A Decimal as text: PostgreSQL reads it into numeric exactly.
                    "cost": None if i["cost"] is None else str(i["cost"]),
                    "cost_unit": i["cost_unit"],
                }
                for i in items
            ]
        )
    }


class Claiming(Limiting):
    """Claiming, and completing the batches that free a worker's slots."""

    def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease: float,
        queues: Sequence[str] | None,
        kinds: Sequence[str] | None,
        durable: bool = True,
    ) -> Direct:
        """Take up to ``limit`` due jobs in the line's order: highest priority, then turn
        (fair share between owners, `jobqueue.sql.fair`), then id.

        Jobs past their start deadline (``start_by``) are never taken, pending or not:
        `expire` moves them to ``expired`` (the reaper first returns an expired lease's job
        to ``pending``).

        Pending jobs come from the partial claim index. Processing jobs whose lease expired
        are claimable too (their lost attempt is recorded in ``errors``), in the same order
        as pending ones: a job whose worker vanished keeps its place in line (its priority
        and ``run_at``), ahead of the jobs enqueued after it. Those out of attempts are left
        to `reap`, which fails them. PostgreSQL locks candidates with ``FOR UPDATE SKIP
        LOCKED`` so concurrent claimers never wait on each other; SQLite runs the statement
        under its single write lock, which makes it atomic.

        ``durable=False`` lets the claim commit without waiting for the disk
        (`CommitUnflushed`): a crash of the database server in that moment undoes it, as if
        it had never been made.
        """
        qs = None if queues is None else tuple(queues)
        ks = None if kinds is None else tuple(kinds)
        stmt = self.once(
            ("claim", qs, ks, durable), lambda: self._claim(qs, ks, durable=durable)
        )
        params = {"jq_worker_id": worker_id, "jq_limit": limit, "jq_lease": lease}
        return Direct(stmt, params | filter_params(qs, ks), self.returned(), generic=True)

    def _claim(
        self,
        queues: Sequence[str] | None,
        kinds: Sequence[str] | None,
        not_in: Any = None,
        *,
        durable: bool = True,
    ) -> Any:
        """The claim; ``not_in`` (a query of ids) keeps those jobs out of the expired-lease
        candidates (`complete_and_claim` completes them in the same statement)."""
        c = self.t.c
        now = DbNow()
        limit = param("limit", Integer())
        filters: list[ColumnElement[bool]] = []
        # One plain parameter per queue and kind (the shape is cached per their tuple), not
        # an expanding IN: that would re-render the SQL on every claim.
        if queues is not None:
            filters.append(c.queue.in_([param(f"queue_{i}", Text()) for i in range(len(queues))]))
        if kinds is not None:
            filters.append(c.kind.in_([param(f"kind_{i}", Text()) for i in range(len(kinds))]))
        # Both kinds of candidates in the one order of the line: a job whose lease expired
        # is taken in its place, not after every pending job (`reap` keeps its place too).
        # Taken only while no limits row is in force (`jobqueue.sql.limits`): then claims
        # obey the limits instead, in `Limiting.claim_within`.
        filters.append(self.no_limits_in_force())
        # Never a job past its start deadline: `expire` moves it to ``expired``.
        filters.append(self.before_deadline())
        pending = (
            select(c.id, c.priority, c.turn)
            .where(in_line(self.t), c.run_at <= now, *filters)
            .order_by(c.priority.desc(), c.turn, c.id)
            .limit(limit)
        )
        # A job claimed before it had a turn (rows from before fair share) sorts first.
        place = func.coalesce(c.turn, literal(0.0, Float())).label("turn")
        expired = (
            select(c.id, c.priority, place)
            .where(
                # Written into the SQL, as `in_line` writes 'pending': the condition of the
                # partial lease index, which a plan made for any parameters can then use.
                c.status == literal_column("'processing'"),
                c.lease_expires_at < now,
                c.attempts < c.max_attempts,
                *filters,
                *([] if not_in is None else [c.id.not_in(not_in)]),
            )
            .order_by(c.priority.desc(), place, c.id)
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
        picked = union_all(select(p.c.id, p.c.priority, p.c.turn), select(e)).subquery("picked")
        first = picked.c
        chosen = select(first.id).order_by(first.priority.desc(), first.turn, first.id).limit(limit)
        where: ColumnElement[bool]
        if self.dialect == "postgresql":
            # An array of the chosen ids, not ``IN (subquery)``: PostgreSQL then finds them
            # by the primary key in every plan. For ``IN`` a plan made for any LIMIT (a
            # generic plan, `Direct.generic`) guesses a tenth of the table and reads it whole
            # to join the ids; planned for each LIMIT instead, each execution pays the
            # planning, a good part of this statement's server time.
            where = c.id == any_(func.array(chosen.scalar_subquery()))
        else:
            where = c.id.in_(chosen)
        if not durable:
            where = where & CommitUnflushed()
        lost = self.error_entry(self.lost_lease_message())
        return (
            update(self.t)
            .where(where)
            .values(
                **self.claimed(),
                errors=case((c.status == Status.PROCESSING.value, lost), else_=c.errors),
            )
            .returning(*self.columns)
        )

    def complete_many(self, items: Sequence[Mapping[str, Any]]) -> Direct:
        """Complete many held jobs in one statement (the worker's batched completer).

        ``items`` are ``{"id", "attempt", "started", "result", "result_url", "cost",
        "cost_unit"}``: the claim, the result as JSON text, and what the attempt cost
        (`added_cost`). The fencing condition is the same as `complete`, so RETURNING tells
        which jobs were fenced off (those ids are missing). The batch travels as one JSON
        parameter, read as rows (``json_to_recordset`` on PostgreSQL, see
        `completion_batch`; `json_rows` on SQLite) and joined to the table: one cached
        statement for any batch size.
        """
        returning = self.once("completed_returned", lambda: {"id": self.t.c.id.type})
        if self.dialect == "postgresql":
            params = completion_batch(items)
            statement = self.once("complete_many_pg", self._complete_json)
            return Direct(statement, params, returning, generic=True)

        def build() -> Any:
            batch = json_rows(COMPLETION_COLUMNS, "batch")
            return self._complete_from(batch, batch.c.result)

        rows = [
            (
                i["id"],
                i["attempt"],
                i["started"],
                i["result"],
                i["result_url"],
                None if i["cost"] is None else to_micros(i["cost"]),
                i["cost_unit"],
            )
            for i in items
        ]
        stmt = self.once("complete_many_sqlite", build)
        return Direct(stmt, {"jq_batch": batch_json(rows)}, returning)

    def complete_and_claim(
        self,
        items: Sequence[Mapping[str, Any]],
        worker_id: str,
        *,
        limit: int,
        lease: float,
        queues: Sequence[str] | None,
        kinds: Sequence[str] | None,
    ) -> Direct | None:
        """Complete a batch and claim up to ``limit`` jobs in one statement (PostgreSQL).

        A busy worker's slots free only when a completion is written, so writing a batch
        and claiming its replacements as two transactions costs two commits (two WAL
        flushes) per cycle; one statement costs one, and the new jobs are held from the
        instant the finished ones are released. The claim is the `claim` statement; the
        completion is `complete_many`'s, fenced the same way. Jobs it completes are kept
        out of the claim's expired-lease candidates, so no row is changed twice.

        The first returned row carries ``jq_completed`` (the ids written); every row carries
        a claimed job's columns, all NULL when nothing was claimed (a LEFT JOIN keeps one
        row). Returns None on SQLite, whose callers run `complete_many` and `claim` in one
        transaction.
        """
        if self.dialect != "postgresql":
            return None
        qs = None if queues is None else tuple(queues)
        ks = None if kinds is None else tuple(kinds)
        stmt = self.once(("complete_and_claim", qs, ks), lambda: self._complete_and_claim(qs, ks))
        params = {
            **completion_batch(items),
            "jq_worker_id": worker_id,
            "jq_limit": limit,
            "jq_lease": lease,
        }
        returning = self.once(
            "returned_after_completing",
            lambda: {"jq_completed": postgresql.ARRAY(Uuid()), **self.returned()},
        )
        return Direct(stmt, params | filter_params(qs, ks), returning, generic=True)

    def _complete_and_claim(self, queues: Sequence[str] | None, kinds: Sequence[str] | None) -> Any:
        done = self._complete_json().cte("completed_jobs")
        # The rows this statement completes cannot be claimed by it too (a row changes
        # once per statement); the rest of the batch (fenced off) is no longer ours.
        claimed = self._claim(queues, kinds, not_in=select(done.c.id)).cte("claimed_jobs")
        # On the first row only: repeated on every row, the ids would be sent and decoded
        # once per claimed job.
        written = case(
            (func.row_number().over() == 1, select(func.array_agg(done.c.id)).scalar_subquery()),
        ).label("jq_completed")
        one = select(literal_column("1").label("one")).subquery("one_row")
        return select(written, *claimed.c).select_from(
            one.outerjoin(claimed, literal_column("true"))
        )

    def _complete_json(self) -> Any:
        def rows(name: str, columns: list[tuple[str, TypeEngine[Any]]]) -> Any:
            return (
                func.json_to_recordset(cast(param("batch", Text()), postgresql.JSON()))
                .table_valued(*(column(n, type_) for n, type_ in columns))
                .render_derived(name=name, with_types=True)
            )

        batch = rows("batch", BATCH_COLUMNS)
        ids = rows("batch_ids", BATCH_COLUMNS[:1])
        # The batch's ids as an array too, so the rows are found by the primary key in any
        # plan: PostgreSQL guesses a set-returning function gives 100 rows, and a plan made
        # for any batch (`Direct.generic`) then reads a small table whole to join them.
        by_key = self.t.c.id == any_(func.array(select(ids.c.job_id).scalar_subquery()))
        return self._complete_from(batch, cast(batch.c.result, postgresql.JSONB()), by_key)

    def _complete_from(
        self, batch: Any, result: ColumnElement[Any], by_key: ColumnElement[bool] | None = None
    ) -> Any:
        c = self.t.c
        now = DbNow()
        fenced = self.fence(batch)
        return (
            update(self.t)
            .where(fenced if by_key is None else by_key & fenced)
            .values(
                status=Status.COMPLETED.value,
                result=result,
                result_url=batch.c.result_url,
                **self.added_cost(batch.c.cost, batch.c.cost_unit),
                error=None,
                progress=100,
                lease_expires_at=None,
                completed_at=now,
                updated_at=now,
            )
            .returning(c.id)
        )
