"""The statements that write new jobs: INSERT (one job, or a batch as arrays), COPY for
large batches, and the look-up of jobs an idempotency key already names."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    Numeric,
    String,
    Text,
    Uuid,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    literal_column,
    null,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeEngine

from ..models import COST_PLACES, Job
from .budgets import Budgeting
from .common import param, unnest
from .dialect import DbNow, DbNowPlus, Money, UTCDateTime
from .fair import step, turn_of
from .steps import CopyRows, Direct, Query
from .table import idempotency_scope, owner_scope


def owner_ranks(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each row's rank (1, 2, ...) among the rows of a batch with its queue and owner: the
    ``k`` of its turn (`jobqueue.sql.fair`), so a batch's jobs of one owner follow each
    other in the line instead of sharing a place."""
    seen: dict[tuple[Any, Any], int] = {}
    ranks = []
    for r in rows:
        group = (r["queue"], r["owner_id"])
        seen[group] = k = seen.get(group, 0) + 1
        ranks.append(k)
    return ranks


class Enqueueing(Budgeting):
    """Writing new jobs."""

    def may_place(self) -> Query:
        """Whether this role may place its jobs in the line (one row: ``may_place``):
        always on SQLite; on PostgreSQL when it may write ``turn`` and ``limit_key`` and
        read the limits table (where the owners' weights are). And whether it may read the
        owners' budgets (``may_budget``)."""

        def build() -> Any:
            if self.dialect != "postgresql":
                return select(literal(True).label("may_place"), literal(True).label("may_budget"))
            t = self.t
            name = f'"{t.schema}"."{t.name}"' if t.schema else f'"{t.name}"'
            lt = self.limits
            limits = f'"{lt.schema}"."{lt.name}"' if lt.schema else f'"{lt.name}"'
            allowed = and_(
                *(
                    func.has_column_privilege(
                        literal(name), literal(column), literal_column("'INSERT'")
                    )
                    for column in ("turn", "limit_key")
                ),
                # The turn reads the owner's weight there.
                func.has_table_privilege(literal(limits), literal_column("'SELECT'")),
            )
            bt = self.budgets
            budgets = f'"{bt.schema}"."{bt.name}"' if bt.schema else f'"{bt.name}"'
            readable = func.has_table_privilege(literal(budgets), literal_column("'SELECT'"))
            return select(allowed.label("may_place"), readable.label("may_budget"))

        return Query(self.once("may_place", build), None)

    def insert_many(
        self, rows: Sequence[Mapping[str, Any]], *, placed: bool = True, guard: bool = False
    ) -> Query:
        """Insert jobs (rows as `jobqueue.validation.new_job_row` makes them) in one
        statement.

        ``run_at`` is the caller's time when given, else the database clock plus the delay.
        Rows whose (queue, owner, idempotency_key) already exists are skipped: the caller
        learns which from RETURNING and reads the existing jobs with `by_idempotency_keys`.
        RETURNING gives only what the database chose (`INSERTED`): the caller knows the rest.

        PostgreSQL gets every column as one array parameter and ``unnest``\\s them: one
        statement and one round trip for any number of jobs, with a single cached plan; a
        single job (`enqueue`, the hottest write there is) gets plain parameters, cheaper to
        send and to plan, as a `Direct` step. SQLite runs a multi-row INSERT per batch of
        rows (SQLAlchemy's insertmanyvalues).

        ``placed`` False leaves ``turn`` and ``limit_key`` out, for a role that may not
        write them (`may_place`): the jobs enter the line through the workers.

        A start deadline (``start_by``: the caller's time, else the database clock plus
        ``expires_seconds``) is written, and returned, only by the statements of batches
        that carry one: an enqueue without one runs the statement it ran before deadlines
        existed, and a role granted the columns of that time can still run it. So is a
        budget's reservation (``reserved``, `jobqueue.sql.budgets`).

        ``guard`` (owned jobs of a placed role, one statement: PostgreSQL, or a single job):
        the INSERT writes nothing when an owner of the batch has a budget, so that an owner
        without one keeps this one statement, and one with one is enqueued by
        `jobqueue.operations.budgets.enqueue_within_budgets` instead. A batch's guard is
        all or nothing: the rows are inserted only when no owner among them has a budget.
        """
        # Rows made before deadlines existed may lack both keys: no deadline.
        dl = any(
            r.get("start_by_value") is not None or r.get("expires_seconds") is not None
            for r in rows
        )
        # Rows a budget reserved for all carry the key (None for other owners' jobs).
        rs = "reserved" in rows[0]
        # A trace context is stored only by the statements of enqueues made in a trace
        # (`jobqueue.tracing`), which give it to every row: others never name the column.
        tc = bool(rows) and rows[0].get("trace_context") is not None
        if not placed:
            stmt = self.once(
                ("insert_unplaced", dl, tc),
                lambda: self._insert_values(ranked=False, placed=False, deadline=dl, traced=tc),
            )
            if len(rows) == 1:
                returning = self.once(
                    ("unplaced_types", dl),
                    lambda: {c.name: c.type for c in self._inserted(False, dl)},
                )
                return Direct(stmt, rows[0], returning)
            # Without the key among the parameters: SQLAlchemy would insert that column.
            return Query(stmt, [{k: v for k, v in r.items() if k != "limit_key"} for r in rows])
        if self.dialect == "postgresql" and len(rows) > 1:
            deadlines = (
                {
                    "jq_start_bys": [r["start_by_value"] for r in rows],
                    "jq_expires": [r["expires_seconds"] for r in rows],
                }
                if dl
                else {}
            )
            if rs:
                deadlines["jq_reserveds"] = [r.get("reserved") for r in rows]
            traces = {"jq_trace_contexts": [r["trace_context"] for r in rows]} if tc else {}
            return Query(
                self.once(
                    ("insert_pg", dl, rs, guard, tc),
                    lambda: self._insert_unnest(dl, rs, guard, tc),
                ),
                deadlines
                | traces
                | {
                    "jq_ids": [r["id"] for r in rows],
                    "jq_queues": [r["queue"] for r in rows],
                    "jq_kinds": [r["kind"] for r in rows],
                    "jq_payloads": [r["payload"] for r in rows],
                    "jq_priorities": [r["priority"] for r in rows],
                    "jq_max_attempts": [r["max_attempts"] for r in rows],
                    "jq_owner_ids": [r["owner_id"] for r in rows],
                    "jq_keys": [r["idempotency_key"] for r in rows],
                    "jq_limit_keys": [r["limit_key"] for r in rows],
                    "jq_run_ats": [r["run_at_value"] for r in rows],
                    "jq_delays": [r["delay_seconds"] for r in rows],
                    "jq_ranks": owner_ranks(rows),
                },
            )
        if len(rows) == 1:
            # Without an idempotency key nothing can conflict: a plain INSERT skips the
            # conflict check and its WAL record (the new id is ours).
            keyed = rows[0]["idempotency_key"] is not None
            stmt = self.once(
                ("insert", dl, keyed, rs, guard, tc),
                lambda: self._insert_values(
                    ranked=False, deadline=dl, keyed=keyed, reserve=rs, guard=guard, traced=tc
                ),
            )
            returning = self.once(
                ("inserted_types", dl), lambda: {c.name: c.type for c in self._inserted(True, dl)}
            )
            return Direct(stmt, rows[0], returning)
        # SQLite: one row per INSERT (one prepared statement, run per row). A multi-row
        # VALUES would repeat every row's turn look-ups in one huge statement, which SQLite
        # prepares in time that grows faster than the batch. Each INSERT sees the rows
        # before it, so every row takes the next turn as a lone job would (rank 1).
        stmt = self.once(
            ("insert_each", dl, rs, tc),
            lambda: self._insert_values(
                ranked=False, deadline=dl, reserve=rs, traced=tc
            ).execution_options(
                insertmanyvalues_page_size=1
            ),
        )
        return Query(stmt, list(rows))

    #: What RETURNING gives after an insert: the id (which rows were inserted) and the
    #: values the database clock chose (``start_by`` only with a deadline, see `insert_many`).
    INSERTED = ("id", "created_at", "updated_at", "run_at", "turn", "start_by")

    def _inserted(self, placed: bool = True, deadline: bool = False) -> list[Any]:
        # A role that may not place its jobs may not read their turn either.
        left_out = {"turn"} if not placed else set()
        if not deadline:
            left_out.add("start_by")
        return [self.t.c[name] for name in self.INSERTED if name not in left_out]

    @staticmethod
    def _deadline(start_by: Any, expires: Any) -> Any:
        """A new job's start deadline: the time given, else the database clock plus
        ``expires`` seconds, else none (NULL)."""
        # Cast for the test: PostgreSQL cannot tell a bare parameter's type from IS NOT NULL.
        return func.coalesce(
            start_by, case((cast(expires, Float()).isnot(None), DbNowPlus(expires)))
        )

    def _insert_values(
        self,
        *,
        ranked: bool,
        placed: bool = True,
        deadline: bool = False,
        keyed: bool = True,
        reserve: bool = False,
        guard: bool = False,
        traced: bool = False,
    ) -> Any:
        """One job (``ranked`` False), or each row of a batch with its ``rank`` among the
        batch's jobs of the same owner and queue (`owner_ranks`); with ``deadline``, its
        start deadline too, with ``reserve`` what its owner's budget reserved. ``keyed``
        False: rows without an idempotency key, inserted without ON CONFLICT. ``guard``:
        nothing is inserted when the owner has a budget (`insert_many`)."""
        run_at = func.coalesce(
            bindparam("run_at_value", type_=UTCDateTime()),
            DbNowPlus(bindparam("delay_seconds", type_=Float())),
        )
        queue = bindparam("queue", type_=String())
        priority = bindparam("priority", type_=Integer())
        owner = bindparam("owner_id", type_=Text())
        rank = bindparam("rank", type_=Integer()) if ranked else None
        payload = bindparam("payload", type_=Text())  # JSON text from check_json
        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        values = dict(
            id=bindparam("id", type_=Uuid()),
            queue=queue,
            kind=bindparam("kind", type_=String()),
            payload=cast(payload, postgresql.JSONB()) if self.dialect == "postgresql" else payload,
            priority=priority,
            max_attempts=bindparam("max_attempts", type_=Integer()),
            owner_id=owner,
            idempotency_key=bindparam("idempotency_key", type_=Text()),
            run_at=run_at,
            **(
                {
                    "limit_key": bindparam("limit_key", type_=String()),
                    "turn": self._entering_turn(run_at, queue, priority, owner, rank),
                }
                if placed
                else {}
            ),
            **(
                {
                    "start_by": self._deadline(
                        bindparam("start_by_value", type_=UTCDateTime()),
                        bindparam("expires_seconds", type_=Float()),
                    )
                }
                if deadline
                else {}
            ),
            **({"reserved": bindparam("reserved", type_=Money())} if reserve else {}),
            **({"trace_context": bindparam("trace_context", type_=Text())} if traced else {}),
        )
        if guard:
            # INSERT ... SELECT, so that a WHERE can keep the row out.
            chosen = select(*values.values()).where(self.no_budget_for(owner))
            stmt = insert(self.t).from_select(list(values), chosen)
        else:
            stmt = insert(self.t).values(**values)
        if keyed:
            stmt = stmt.on_conflict_do_nothing(**self._key_conflict())
        # Rows are matched to jobs by id, so RETURNING need not keep the parameters' order
        # (asking for it would make SQLAlchemy insert one row per statement).
        return stmt.returning(*self._inserted(placed, deadline))

    def _insert_unnest(
        self,
        deadline: bool = False,
        reserve: bool = False,
        guard: bool = False,
        traced: bool = False,
    ) -> Any:
        c = self.t.c
        arrays: list[tuple[str, str, TypeEngine[Any]]] = [
            ("id", "ids", Uuid()),
            ("queue", "queues", Text()),
            ("kind", "kinds", Text()),
            ("payload", "payloads", Text()),
            ("priority", "priorities", Integer()),
            ("max_attempts", "max_attempts", Integer()),
            ("owner_id", "owner_ids", Text()),
            ("idempotency_key", "keys", Text()),
            ("limit_key", "limit_keys", Text()),
            ("run_at_value", "run_ats", DateTime(timezone=True)),
            ("delay_seconds", "delays", Float()),
            ("rank", "ranks", Integer()),
        ]
        if deadline:
            arrays += [
                ("start_by_value", "start_bys", DateTime(timezone=True)),
                ("expires_seconds", "expires", Float()),
            ]
        if reserve:
            arrays.append(("reserved", "reserveds", Numeric(20, COST_PLACES)))
        if traced:
            arrays.append(("trace_context", "trace_contexts", Text()))
        n = unnest(arrays, "new_jobs").c
        run_at = func.coalesce(n.run_at_value, DbNowPlus(n.delay_seconds))
        rows = select(
            n.id,
            n.queue,
            n.kind,
            cast(n.payload, postgresql.JSONB()),
            n.priority,
            n.max_attempts,
            n.owner_id,
            n.idempotency_key,
            n.limit_key,
            run_at,
            self._entering_turn(run_at, n.queue, n.priority, n.owner_id, n.rank),
            *([self._deadline(n.start_by_value, n.expires_seconds)] if deadline else []),
            *([n.reserved] if reserve else []),
            *([n.trace_context] if traced else []),
        )
        if guard:
            # All or nothing: no row when any owner of the batch has a budget (the same
            # array parameter the rows come from).
            owners = param("owner_ids", postgresql.ARRAY(Text()))
            b = self.budgets.c
            rows = rows.where(
                ~exists(select(literal_column("1")).where(b.owner_id == func.any(owners)))
            )
        targets = [
            c.id,
            c.queue,
            c.kind,
            c.payload,
            c.priority,
            c.max_attempts,
            c.owner_id,
            c.idempotency_key,
            c.limit_key,
            c.run_at,
            c.turn,
            *([c.start_by] if deadline else []),
            *([c.reserved] if reserve else []),
            *([c.trace_context] if traced else []),
        ]
        return (
            postgresql.insert(self.t)
            .from_select(targets, rows)
            .on_conflict_do_nothing(**self._key_conflict())
            .returning(*self._inserted(True, deadline))
        )

    def _entering_turn(self, run_at: Any, queue: Any, priority: Any, owner: Any, rank: Any) -> Any:
        """A new job's place in the line: due now, it enters at once; due later, it waits
        outside the line and enters when due (`jobqueue.sql.fair`)."""
        turn = turn_of(self.t, self.limits, queue, priority, owner, rank)
        return case((run_at <= DbNow(), turn), else_=null())

    def _key_conflict(self) -> dict[str, Any]:
        """The ON CONFLICT target: the idempotency index (a key is unique per queue and
        owner, see `idempotency_scope`), so an insert never meets another owner's."""
        return {
            "index_elements": list(idempotency_scope(self.t)),
            "index_where": self.t.c.idempotency_key.isnot(None),
        }

    #: The columns `copy_new` writes; every other column takes its server default.
    COPY_COLUMNS = (
        "id",
        "queue",
        "kind",
        "payload",
        "priority",
        "max_attempts",
        "owner_id",
        "limit_key",
        "run_at",
        "turn",
        "created_at",
        "updated_at",
        "start_by",
    )

    def copy_context(self, groups: Sequence[tuple[str, int, str | None]]) -> Query:
        """What the COPY path needs first, in one round trip: the database clock (the new
        jobs' ``created_at``, so they can be returned without RETURNING), whether this
        role may COPY here at all, and for each (queue, priority, owner) of ``groups``
        where its jobs enter the line (``base``, the turn of its first job, and ``step``,
        see `jobqueue.sql.fair`). COPY FROM refuses a table where row-level security
        applies to the role, and needs INSERT on every column it names (a role with
        column grants only, like Supabase's ``authenticated``, lacks it): then the INSERT
        runs instead."""

        def build() -> Any:
            name = param("table", Text())
            may_copy = and_(
                func.row_security_active(name).is_(False),
                func.has_table_privilege(name, literal_column("'INSERT'")),
            )
            g = unnest(
                [
                    ("queue", "queues", Text()),
                    ("priority", "priorities", Integer()),
                    ("owner_id", "owner_ids", Text()),
                ],
                "groups",
            ).c
            return select(
                DbNow().label("now"),
                may_copy.label("may_copy"),
                g.queue,
                g.priority,
                g.owner_id,
                turn_of(self.t, self.limits, g.queue, g.priority, g.owner_id, None).label("base"),
                step(self.limits, g.owner_id).label("step"),
            )

        t = self.t
        name = f'"{t.schema}"."{t.name}"' if t.schema else f'"{t.name}"'
        params = {
            "jq_table": name,
            "jq_queues": [q for q, _, _ in groups],
            "jq_priorities": [p for _, p, _ in groups],
            "jq_owner_ids": [o for _, _, o in groups],
        }
        return Query(self.once("copy_context", build), params)

    def copy_new(self, jobs: Iterable[tuple[Job, str]], *, traced: bool = False) -> CopyRows:
        """COPY new jobs (PostgreSQL): each `Job` as it will be stored, with its payload
        as JSON text. ``jobs`` may be lazy (see `CopyRows`). With ``traced`` (an enqueue in a
        trace, `jobqueue.tracing`) each job's ``trace_context`` is written too."""
        records: Iterator[tuple[Any, ...]] = (
            (
                j.id,
                j.queue,
                j.kind,
                payload,
                j.priority,
                j.max_attempts,
                j.owner_id,
                j.limit_key,
                j.run_at,
                j.turn,
                j.created_at,
                j.updated_at,
                j.start_by,
            )
            for j, payload in jobs
        )
        if traced:
            # Apart from the plain records, which every large batch builds.
            records = (
                (
                    j.id,
                    j.queue,
                    j.kind,
                    payload,
                    j.priority,
                    j.max_attempts,
                    j.owner_id,
                    j.limit_key,
                    j.run_at,
                    j.turn,
                    j.created_at,
                    j.updated_at,
                    j.start_by,
                    j.trace_context,
                )
                for j, payload in jobs
            )
        columns = (*self.COPY_COLUMNS, "trace_context") if traced else self.COPY_COLUMNS
        types = tuple(self.t.c[name].type for name in columns)
        return CopyRows(self.t.schema, self.t.name, columns, types, records)

    def by_idempotency_keys(self, queue: str, owner_id: str | None, keys: Sequence[str]) -> Query:
        """The jobs holding ``keys`` in ``queue`` for ``owner_id`` (None: the unowned jobs'),
        matched as the idempotency index matches them."""

        def build() -> Any:
            c = self.t.c
            return select(*self.columns).where(
                c.queue == param("queue", Text()),
                owner_scope(self.t) == param("owner_scope", Text()),
                c.idempotency_key.in_(bindparam("jq_keys", expanding=True, type_=Text())),
            )

        params = {"jq_queue": queue, "jq_owner_scope": owner_id or "", "jq_keys": list(keys)}
        return Query(self.once("by_keys", build), params)
