"""Every SQL statement jobqueue runs, built once with SQLAlchemy Core.

`Statements` is bound to one jobs table and one dialect. Its methods return a `Bound`: a
statement and the parameters to run it with. They never touch a connection, so the sync and
the async queue run exactly the same SQL, and the statements can be compiled and EXPLAINed
in tests without running them.

Each statement is built once per table and shape and then reused with new parameters:
building a SQLAlchemy construct costs far more than running it (milliseconds for the
claim), and one construct per shape is also what lets SQLAlchemy's compiled cache and the
driver's prepared statements hit on every call. So values always travel as bound
parameters (names start with ``jq_`` so they never clash with column names), never inside
the construct.

Fencing: every write a worker makes to a job it claimed carries ``(id, attempts)`` and
requires ``status = 'processing'``. A worker whose lease was lost (the job was reaped, claimed
again or cancelled) matches no row and so changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Executable,
    Float,
    Integer,
    String,
    Table,
    Text,
    Uuid,
    and_,
    bindparam,
    case,
    cast,
    column,
    delete,
    func,
    literal_column,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TypeEngine

from .bulk import CopyRows, Direct
from .dialects import (
    DbNow,
    DbNowAfter,
    DbNowPlus,
    DbNowText,
    JsonAppend,
    UTCDateTime,
    sqlite_time,
)
from .schema import JSON_COLUMNS, Job, Status, idempotency_scope, owner_scope, sources_of

T = TypeVar("T")

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
"""One parameter set, a list of them (executemany), or none."""

#: Statement shapes kept per `Statements` (shapes differ by filters, e.g. the queues a
#: worker claims from); past this the cache starts over rather than grow without bound.
MAX_SHAPES = 256


class Bound(NamedTuple):
    """A statement and the parameters to execute it with (or a COPY, see `copy_new`, or a
    statement to run on the driver itself, see `insert_many`)."""

    statement: Executable | CopyRows | Direct
    params: Params

    def plain(self) -> tuple[Executable, Params]:
        """The SQLAlchemy statement and its parameters, a `Direct` unwrapped (to run it
        on any connection, compile it, or EXPLAIN it)."""
        if isinstance(self.statement, Direct):
            return self.statement.statement, self.statement.params
        if isinstance(self.statement, CopyRows):
            raise TypeError("a COPY has no SQLAlchemy statement")
        return self.statement, self.params


def _in(statuses: Sequence[Status]) -> list[str]:
    return [s.value for s in statuses]


def _p(name: str, type_: Any) -> BindParameter[Any]:
    return bindparam(f"jq_{name}", type_=type_)


def _unnest(arrays: Sequence[tuple[str, str, TypeEngine[Any]]], name: str) -> Any:
    """A PostgreSQL ``unnest`` of array parameters as a table ``name``.

    ``arrays`` are ``(column, parameter, element type)``: one array parameter per column, so
    a batch of any size is one statement with one cached plan.
    """
    return (
        func.unnest(*(_p(param, postgresql.ARRAY(type_)) for _, param, type_ in arrays))
        .table_valued(*(column(name, type_) for name, _, type_ in arrays))
        .render_derived(name=name)
    )


def _json_rows(columns: Sequence[tuple[str, TypeEngine[Any]]], name: str) -> Any:
    """A SQLite batch as a table ``name``: its rows sent as one JSON array of arrays (the
    ``jq_batch`` parameter, see `_batch_json`) and read with ``json_each``.

    One parameter, so one statement for any batch size, compiled once and cached; a VALUES
    list would be compiled again on every call, one bound parameter per cell.
    """
    each = func.json_each(_p("batch", Text())).table_valued("value")
    return select(
        *(
            func.json_extract(each.c.value, literal_column(f"'$[{i}]'"), type_=type_).label(col)
            for i, (col, type_) in enumerate(columns)
        )
    ).subquery(name)


def _batch_json(rows: Iterable[Sequence[Any]]) -> str:
    """Rows for `_json_rows`, as SQLite stores their values: ids as 32 hex digits, times
    as UTC text (`sqlite_time`)."""
    return json.dumps(
        [
            [v.hex if isinstance(v, UUID) else sqlite_time(v) if isinstance(v, datetime) else v
             for v in row]
            for row in rows
        ]
    )


def _filter_params(queues: Sequence[str] | None, kinds: Sequence[str] | None) -> dict[str, str]:
    """The values of the claim's queue and kind parameters (see `Statements._claim`)."""
    out = {f"jq_queue_{i}": q for i, q in enumerate(queues or ())}
    out.update({f"jq_kind_{i}": k for i, k in enumerate(kinds or ())})
    return out


def _completion_arrays(items: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """A completion batch as the array parameters `Statements._complete_unnest` reads."""
    return {
        "jq_ids": [i["id"] for i in items],
        "jq_attempts": [i["attempt"] for i in items],
        "jq_started": [i["started"] for i in items],
        "jq_results": [i["result"] for i in items],
        "jq_result_urls": [i["result_url"] for i in items],
    }


def _json_param(name: str, dialect: str) -> ColumnElement[Any]:
    """A bound parameter holding JSON text (as `operations.check_json` encoded it), for a
    JSON column: cast to ``jsonb`` on PostgreSQL; SQLite stores the text as it is."""
    param = _p(name, Text())
    return cast(param, postgresql.JSONB()) if dialect == "postgresql" else param


#: The columns of a SQLite batch of held claims (`heartbeat_many`) and of completions.
_HELD_COLUMNS: list[tuple[str, TypeEngine[Any]]] = [
    ("job_id", Uuid()),
    ("attempt", Integer()),
    ("started", UTCDateTime()),
]
_COMPLETION_COLUMNS = [*_HELD_COLUMNS, ("result", Text()), ("result_url", Text())]


class Statements:
    """The statements for one jobs table on one dialect (``postgresql`` or ``sqlite``)."""

    def __init__(self, table: Table, dialect: str) -> None:
        if dialect not in ("postgresql", "sqlite"):
            raise ValueError(f"unsupported dialect {dialect!r}")
        self.t = table
        self.dialect = dialect
        #: What every statement that returns jobs returns: the table's columns, the JSON
        #: ones as their text (see `_as_text`).
        self.columns: list[ColumnElement[Any]] = [self._as_text(c) for c in table.c]
        self._shapes: dict[Hashable, Any] = {}

    def _as_text(self, column: Any) -> ColumnElement[Any]:
        """A JSON column as its text, for `operations.read_job` to decode row by row.

        A row a client wrote may hold JSON that Python's decoder refuses (a number of
        thousands of digits, nesting thousands deep). Decoded by the driver, it would fail
        the whole result, every other job of a claim batch with it; as text it cannot fail.
        """
        if column.name not in JSON_COLUMNS:
            return column  # type: ignore[no-any-return]
        if self.dialect == "postgresql":
            return cast(column, Text()).label(column.name)
        return type_coerce(column, Text()).label(column.name)

    # -- helpers ---------------------------------------------------------------------------

    def _once(self, key: Hashable, build: Callable[[], T]) -> T:
        """The statement for ``key``, built on first use."""
        found = self._shapes.get(key)
        if found is None:
            if len(self._shapes) >= MAX_SHAPES:
                self._shapes.clear()
            found = self._shapes[key] = build()
        return found

    def _returned(self) -> dict[str, TypeEngine[Any]]:
        """Every column's name and type: what RETURNING * gives, for `bulk.Direct`."""
        return self._once("returned", lambda: {c.name: c.type for c in self.columns})

    def _direct(
        self, stmt: Any, params: dict[str, Any], returning: dict[str, TypeEngine[Any]]
    ) -> Bound:
        """A worker's hot statement: on PostgreSQL run past SQLAlchemy's execution
        machinery when the queue may (`bulk.Direct`), as `insert_many` runs one job's."""
        if self.dialect == "postgresql":
            return Bound(Direct(stmt, params, returning), None)
        return Bound(stmt, params)

    def _fence_on(self, job_id: Any, attempt: Any, started: Any) -> ColumnElement[bool]:
        """The fencing condition: this job, in this claim of this attempt, still processing.

        ``started_at`` tells two claims of the same attempt number apart: a released job
        gets its attempt back (``attempts`` goes down by one), so the next claim has the
        number of the released one again, but a later ``started_at`` (see `claim`).
        """
        c = self.t.c
        return and_(
            c.id == job_id,
            c.attempts == attempt,
            c.started_at == started,
            c.status == Status.PROCESSING.value,
        )

    def _fenced(self) -> ColumnElement[bool]:
        return self._fence_on(
            _p("job_id", Uuid()), _p("attempt", Integer()), _p("started", UTCDateTime())
        )

    def _lost_lease_message(self) -> ColumnElement[str]:
        """The error recorded for an attempt whose lease expired (claim and reap)."""
        held_by = func.coalesce(self.t.c.locked_by, literal_column("'unknown worker'"))
        return literal_column("'lease expired while held by '", Text()).concat(held_by)

    @staticmethod
    def _fence(job_id: UUID, attempt: int, started: datetime | None, **more: Any) -> dict[str, Any]:
        return {"jq_job_id": job_id, "jq_attempt": attempt, "jq_started": started, **more}

    def _error_entry(self, message: ColumnElement[Any]) -> JsonAppend:
        """``errors`` with one more ``{attempt, at, error}`` entry for the current attempt."""
        c = self.t.c
        return JsonAppend(
            c.errors,
            literal_column("'attempt'"),
            c.attempts,
            literal_column("'at'"),
            DbNowText(),
            literal_column("'error'"),
            message,
        )

    def _at_least_one_more(self) -> ColumnElement[int]:
        c = self.t.c
        return case((c.max_attempts > c.attempts, c.max_attempts), else_=c.attempts + 1)

    # -- writing new jobs ------------------------------------------------------------------

    def insert_many(self, rows: Sequence[Mapping[str, Any]]) -> Bound:
        """Insert jobs (rows as `NewJob.to_row` makes them) in one statement.

        ``run_at`` is the caller's time when given, else the database clock plus the delay.
        Rows whose (queue, owner, idempotency_key) already exists are skipped: the caller
        learns which from RETURNING and reads the existing jobs with `by_idempotency_keys`.
        RETURNING gives only what the database chose (`INSERTED`): the caller knows the rest.

        PostgreSQL gets every column as one array parameter and ``unnest``\\s them: one
        statement and one round trip for any number of jobs, with a single cached plan; a
        single job (`enqueue`) gets plain parameters, cheaper to send and to plan, and
        skips SQLAlchemy's execution machinery where it may (`bulk.Direct`).
        SQLite runs a multi-row INSERT per batch of rows (SQLAlchemy's insertmanyvalues).
        """
        if self.dialect == "postgresql" and len(rows) > 1:
            return Bound(
                self._once("insert_pg", self._insert_unnest),
                {
                    "jq_ids": [r["id"] for r in rows],
                    "jq_queues": [r["queue"] for r in rows],
                    "jq_kinds": [r["kind"] for r in rows],
                    "jq_payloads": [r["payload"] for r in rows],
                    "jq_priorities": [r["priority"] for r in rows],
                    "jq_max_attempts": [r["max_attempts"] for r in rows],
                    "jq_owner_ids": [r["owner_id"] for r in rows],
                    "jq_keys": [r["idempotency_key"] for r in rows],
                    "jq_run_ats": [r["run_at_value"] for r in rows],
                    "jq_delays": [r["delay_seconds"] for r in rows],
                },
            )
        stmt = self._once("insert", self._insert_values)
        if self.dialect == "postgresql":  # one job: `enqueue`, the hottest write there is
            returning = self._once(
                "inserted_types", lambda: {c.name: c.type for c in self._inserted()}
            )
            return Bound(Direct(stmt, rows[0], returning), None)
        return Bound(stmt, rows[0] if len(rows) == 1 else list(rows))

    #: What RETURNING gives after an insert: the id (which rows were inserted) and the
    #: values the database clock chose.
    INSERTED = ("id", "created_at", "updated_at", "run_at")

    def _inserted(self) -> list[Any]:
        return [self.t.c[name] for name in self.INSERTED]

    def _insert_values(self) -> Any:
        run_at = func.coalesce(
            bindparam("run_at_value", type_=UTCDateTime()),
            DbNowPlus(bindparam("delay_seconds", type_=Float())),
        )
        payload = bindparam("payload", type_=Text())  # JSON text from check_json
        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        stmt = insert(self.t).values(
            id=bindparam("id", type_=Uuid()),
            queue=bindparam("queue", type_=String()),
            kind=bindparam("kind", type_=String()),
            payload=cast(payload, postgresql.JSONB()) if self.dialect == "postgresql" else payload,
            priority=bindparam("priority", type_=Integer()),
            max_attempts=bindparam("max_attempts", type_=Integer()),
            owner_id=bindparam("owner_id", type_=Text()),
            idempotency_key=bindparam("idempotency_key", type_=Text()),
            run_at=run_at,
        )
        # Rows are matched to jobs by id, so RETURNING need not keep the parameters' order
        # (asking for it would make SQLAlchemy insert one row per statement).
        return stmt.on_conflict_do_nothing(**self._key_conflict()).returning(*self._inserted())

    def _insert_unnest(self) -> Any:
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
            ("run_at_value", "run_ats", DateTime(timezone=True)),
            ("delay_seconds", "delays", Float()),
        ]
        n = _unnest(arrays, "new_jobs").c
        rows = select(
            n.id,
            n.queue,
            n.kind,
            cast(n.payload, postgresql.JSONB()),
            n.priority,
            n.max_attempts,
            n.owner_id,
            n.idempotency_key,
            func.coalesce(n.run_at_value, DbNowPlus(n.delay_seconds)),
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
            c.run_at,
        ]
        return (
            postgresql.insert(self.t)
            .from_select(targets, rows)
            .on_conflict_do_nothing(**self._key_conflict())
            .returning(*self._inserted())
        )

    def _key_conflict(self) -> dict[str, Any]:
        """The ON CONFLICT target: the idempotency index (a key is unique per queue and
        owner, see `schema.idempotency_scope`), so an insert never meets another owner's."""
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
        "run_at",
        "created_at",
        "updated_at",
    )

    def copy_context(self) -> Bound:
        """What the COPY path needs first, in one round trip: the database clock (the new
        jobs' ``created_at``, so they can be returned without RETURNING) and whether this
        role may COPY here at all. COPY FROM refuses a table where row-level security
        applies to the role, and needs INSERT on every column it names (a role with
        column grants only, like Supabase's ``authenticated``, lacks it): then the INSERT
        runs instead."""

        def build() -> Any:
            name = _p("table", Text())
            may_copy = and_(
                func.row_security_active(name).is_(False),
                func.has_table_privilege(name, literal_column("'INSERT'")),
            )
            return select(DbNow().label("now"), may_copy.label("may_copy"))

        t = self.t
        name = f'"{t.schema}"."{t.name}"' if t.schema else f'"{t.name}"'
        return Bound(self._once("copy_context", build), {"jq_table": name})

    def copy_new(self, jobs: Iterable[tuple[Job, str]]) -> Bound:
        """COPY new jobs (PostgreSQL): each `Job` as it will be stored, with its payload
        as JSON text. ``jobs`` may be lazy (see `bulk.CopyRows`)."""
        records = (
            (
                j.id,
                j.queue,
                j.kind,
                payload,
                j.priority,
                j.max_attempts,
                j.owner_id,
                j.run_at,
                j.created_at,
                j.updated_at,
            )
            for j, payload in jobs
        )
        types = tuple(self.t.c[name].type for name in self.COPY_COLUMNS)
        step = CopyRows(self.t.schema, self.t.name, self.COPY_COLUMNS, types, records)
        return Bound(step, None)

    def by_idempotency_keys(self, queue: str, owner_id: str | None, keys: Sequence[str]) -> Bound:
        """The jobs holding ``keys`` in ``queue`` for ``owner_id`` (None: the unowned jobs'),
        matched as the idempotency index matches them."""

        def build() -> Any:
            c = self.t.c
            return select(*self.columns).where(
                c.queue == _p("queue", Text()),
                owner_scope(self.t) == _p("owner_scope", Text()),
                c.idempotency_key.in_(bindparam("jq_keys", expanding=True, type_=Text())),
            )

        params = {"jq_queue": queue, "jq_owner_scope": owner_id or "", "jq_keys": list(keys)}
        return Bound(self._once("by_keys", build), params)

    # -- claiming ----------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        *,
        limit: int,
        lease: float,
        queues: Sequence[str] | None,
        kinds: Sequence[str] | None,
    ) -> Bound:
        """Take up to ``limit`` due jobs, highest priority then oldest first.

        Pending jobs come from the partial claim index. Processing jobs whose lease expired
        are claimable too (their lost attempt is recorded in ``errors``); those out of
        attempts are left to `reap`, which fails them. PostgreSQL locks candidates with
        ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never wait on each other; SQLite
        runs the statement under its single write lock, which makes it atomic.
        """
        qs = None if queues is None else tuple(queues)
        ks = None if kinds is None else tuple(kinds)
        stmt = self._once(("claim", qs, ks), lambda: self._claim(qs, ks))
        params = {"jq_worker_id": worker_id, "jq_limit": limit, "jq_lease": lease}
        return self._direct(stmt, params | _filter_params(qs, ks), self._returned())

    def _claim(
        self,
        queues: Sequence[str] | None,
        kinds: Sequence[str] | None,
        not_in: ColumnElement[Any] | None = None,
    ) -> Any:
        """The claim; ``not_in`` (an array of ids) keeps those jobs out of the expired-lease
        candidates (`complete_and_claim` completes them in the same statement)."""
        c = self.t.c
        now = DbNow()
        limit = _p("limit", Integer())
        filters: list[ColumnElement[bool]] = []
        # One plain parameter per queue and kind (the shape is cached per their tuple), not
        # an expanding IN: that would re-render the SQL on every claim.
        if queues is not None:
            filters.append(c.queue.in_([_p(f"queue_{i}", Text()) for i in range(len(queues))]))
        if kinds is not None:
            filters.append(c.kind.in_([_p(f"kind_{i}", Text()) for i in range(len(kinds))]))
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
                *([] if not_in is None else [c.id != func.all(not_in)]),
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
        lost = self._error_entry(self._lost_lease_message())
        return (
            update(self.t)
            .where(where)
            .values(
                status=Status.PROCESSING.value,
                attempts=c.attempts + 1,
                locked_by=_p("worker_id", Text()),
                # Later than any earlier claim of the job, even within the clock's step:
                # part of the fencing token (see `_fence_on`).
                started_at=DbNowAfter(c.started_at),
                lease_expires_at=DbNowPlus(_p("lease", Float())),
                updated_at=now,
                # Each attempt starts its own progress: nothing carries over from a released,
                # retried or expired attempt.
                progress=0,
                progress_message=None,
                errors=case((c.status == Status.PROCESSING.value, lost), else_=c.errors),
            )
            .returning(*self.columns)
        )

    # -- a worker's writes to the jobs it holds (all fenced) -----------------------------------

    def heartbeat(
        self, job_id: UUID, attempt: int, started: datetime | None, lease: float
    ) -> Bound:
        def build() -> Any:
            c = self.t.c
            return (
                update(self.t)
                .where(self._fenced())
                .values(lease_expires_at=DbNowPlus(_p("lease", Float())), updated_at=DbNow())
                .returning(c.lease_expires_at)
            )

        params = self._fence(job_id, attempt, started, jq_lease=lease)
        return Bound(self._once("heartbeat", build), params)

    def heartbeat_many(
        self, worker_id: str, held: Sequence[tuple[UUID, int, datetime | None]], lease: float
    ) -> Bound:
        """Extend the leases of the jobs a worker holds, ``(id, attempt, started_at)`` of
        each claim, in one statement.

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
            stmt = self._once(
                "heartbeat_many_pg", lambda: self._heartbeat_from(_unnest(arrays, "batch"))
            )
            return Bound(stmt, params)
        stmt = self._once(
            "heartbeat_many_sqlite",
            lambda: self._heartbeat_from(_json_rows(_HELD_COLUMNS, "batch")),
        )
        params = {"jq_batch": _batch_json(held), "jq_lease": lease, "jq_worker_id": worker_id}
        return Bound(stmt, params)

    def _heartbeat_from(self, batch: Any) -> Any:
        c = self.t.c
        return (
            update(self.t)
            .where(
                self._fence_on(batch.c.job_id, batch.c.attempt, batch.c.started),
                c.locked_by == _p("worker_id", Text()),
            )
            .values(lease_expires_at=DbNowPlus(_p("lease", Float())), updated_at=DbNow())
            .returning(c.id, c.attempts)
        )

    def set_progress(
        self,
        job_id: UUID,
        attempt: int,
        started: datetime | None,
        percent: int,
        message: str | None,
    ) -> Bound:
        def build() -> Any:
            return (
                update(self.t)
                .where(self._fenced())
                .values(
                    progress=_p("percent", Integer()),
                    progress_message=_p("message", Text()),
                    updated_at=DbNow(),
                )
                .returning(self.t.c.id)
            )

        params = self._fence(job_id, attempt, started, jq_percent=percent, jq_message=message)
        return Bound(self._once("set_progress", build), params)

    def remember(
        self, job_id: UUID, attempt: int, started: datetime | None, remote_task_id: str
    ) -> Bound:
        def build() -> Any:
            return (
                update(self.t)
                .where(self._fenced())
                .values(remote_task_id=_p("task_id", Text()), updated_at=DbNow())
                .returning(self.t.c.id)
            )

        params = self._fence(job_id, attempt, started, jq_task_id=remote_task_id)
        return Bound(self._once("remember", build), params)

    def complete(
        self,
        job_id: UUID,
        attempt: int,
        started: datetime | None,
        result_json: str | None,
        result_url: str | None,
    ) -> Bound:
        """Complete a held job; ``result_json`` is the result as JSON text (None: no result)."""

        def build() -> Any:
            now = DbNow()
            return (
                update(self.t)
                .where(self._fenced())
                .values(
                    status=Status.COMPLETED.value,
                    result=_json_param("result", self.dialect),
                    result_url=_p("result_url", Text()),
                    error=None,
                    progress=100,
                    lease_expires_at=None,
                    completed_at=now,
                    updated_at=now,
                )
                .returning(*self.columns)
            )

        params = self._fence(
            job_id, attempt, started, jq_result=result_json, jq_result_url=result_url
        )
        return Bound(self._once("complete", build), params)

    def complete_many(self, items: Sequence[Mapping[str, Any]]) -> Bound:
        """Complete many held jobs in one statement (the worker's batched completer).

        ``items`` are ``{"id", "attempt", "started", "result", "result_url"}``: the claim
        and the result as JSON text. The fencing condition is the same as `complete`, so
        RETURNING tells which jobs were fenced off (those ids are missing). On PostgreSQL
        the batch travels as array parameters that are ``unnest``\\ed and joined to the
        table, on SQLite as one JSON parameter (`_json_rows`): one cached statement for any
        batch size.
        """
        if self.dialect == "postgresql":
            params = _completion_arrays(items)
            return Bound(self._once("complete_many_pg", self._complete_unnest), params)

        def build() -> Any:
            batch = _json_rows(_COMPLETION_COLUMNS, "batch")
            return self._complete_from(batch, batch.c.result)

        rows = [(i["id"], i["attempt"], i["started"], i["result"], i["result_url"]) for i in items]
        return Bound(self._once("complete_many_sqlite", build), {"jq_batch": _batch_json(rows)})

    def complete_and_claim(
        self,
        items: Sequence[Mapping[str, Any]],
        worker_id: str,
        *,
        limit: int,
        lease: float,
        queues: Sequence[str] | None,
        kinds: Sequence[str] | None,
    ) -> Bound | None:
        """Complete a batch and claim up to ``limit`` jobs in one statement (PostgreSQL).

        A busy worker's slots free only when a completion is written, so writing a batch
        and claiming its replacements as two transactions costs two commits (two WAL
        flushes) per cycle; one statement costs one, and the new jobs are held from the
        instant the finished ones are released. The claim is the `claim` statement; the
        completion is `complete_many`'s, fenced the same way. Jobs being completed are kept
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
        stmt = self._once(("complete_and_claim", qs, ks), lambda: self._complete_and_claim(qs, ks))
        params = {
            **_completion_arrays(items),
            "jq_worker_id": worker_id,
            "jq_limit": limit,
            "jq_lease": lease,
        }
        returning = self._once(
            "returned_after_completing",
            lambda: {"jq_completed": postgresql.ARRAY(Uuid()), **self._returned()},
        )
        return self._direct(stmt, params | _filter_params(qs, ks), returning)

    def _complete_and_claim(self, queues: Sequence[str] | None, kinds: Sequence[str] | None) -> Any:
        done = self._complete_unnest().cte("completed_jobs")
        ids = _p("ids", postgresql.ARRAY(Uuid()))
        claimed = self._claim(queues, kinds, not_in=ids).cte("claimed_jobs")
        # On the first row only: repeated on every row, the ids would be sent and decoded
        # once per claimed job.
        written = case(
            (func.row_number().over() == 1, select(func.array_agg(done.c.id)).scalar_subquery()),
        ).label("jq_completed")
        one = select(literal_column("1").label("one")).subquery("one_row")
        return select(written, *claimed.c).select_from(
            one.outerjoin(claimed, literal_column("true"))
        )

    def _complete_unnest(self) -> Any:
        arrays: list[tuple[str, str, TypeEngine[Any]]] = [
            ("job_id", "ids", Uuid()),
            ("attempt", "attempts", Integer()),
            ("started", "started", DateTime(timezone=True)),
            ("result", "results", Text()),
            ("result_url", "result_urls", Text()),
        ]
        batch = _unnest(arrays, "batch")
        return self._complete_from(batch, cast(batch.c.result, postgresql.JSONB()))

    def _complete_from(self, batch: Any, result: ColumnElement[Any]) -> Any:
        c = self.t.c
        now = DbNow()
        return (
            update(self.t)
            .where(self._fence_on(batch.c.job_id, batch.c.attempt, batch.c.started))
            .values(
                status=Status.COMPLETED.value,
                result=result,
                result_url=batch.c.result_url,
                error=None,
                progress=100,
                lease_expires_at=None,
                completed_at=now,
                updated_at=now,
            )
            .returning(c.id)
        )

    def fail(
        self,
        job_id: UUID,
        attempt: int,
        started: datetime | None,
        error: str,
        retry_in: float | None,
    ) -> Bound:
        """Record a failed attempt: back to ``pending`` after ``retry_in`` seconds, or, when
        ``retry_in`` is None, ``failed`` for good. The error joins the ``errors`` history."""
        retrying = retry_in is not None

        def build() -> Any:
            now = DbNow()
            message = _p("error", Text())
            common: dict[str, Any] = {
                "error": message,
                "errors": self._error_entry(cast(message, Text())),
                "lease_expires_at": None,
                "updated_at": now,
            }
            if not retrying:
                moves: dict[str, Any] = {"status": Status.FAILED.value, "completed_at": now}
            else:
                moves = {
                    "status": Status.PENDING.value,
                    "run_at": DbNowPlus(_p("retry_in", Float())),
                    "locked_by": None,
                    "max_attempts": self._at_least_one_more(),
                }
            return (
                update(self.t)
                .where(self._fenced())
                .values(**common, **moves)
                .returning(*self.columns)
            )

        params = self._fence(job_id, attempt, started, jq_error=error)
        if retrying:
            params["jq_retry_in"] = retry_in
        return Bound(self._once(("fail", retrying), build), params)

    def release(
        self, job_id: UUID, attempt: int, started: datetime | None, reason: str
    ) -> Bound:
        """Give a held job back to the queue at once, without spending an attempt: its
        ``attempts`` go back down by one (``max_attempts`` stays) and its progress starts
        over. ``started_at`` stays: the next claim starts later than it (see `claim`), so
        the fence still tells this claim from the next one with the same attempt number.
        """

        def build() -> Any:
            c = self.t.c
            now = DbNow()
            return (
                update(self.t)
                .where(self._fenced())
                .values(
                    status=Status.PENDING.value,
                    run_at=now,
                    locked_by=None,
                    lease_expires_at=None,
                    attempts=c.attempts - 1,
                    progress=0,
                    progress_message=None,
                    errors=self._error_entry(cast(_p("reason", Text()), Text())),
                    updated_at=now,
                )
                .returning(*self.columns)
            )

        params = self._fence(job_id, attempt, started, jq_reason=reason)
        return Bound(self._once("release", build), params)

    def fence_state(self, job_id: UUID) -> Bound:
        """What a fenced write that matched nothing needs to explain itself."""

        def build() -> Any:
            c = self.t.c
            return select(c.status, c.attempts, c.started_at, c.locked_by).where(
                c.id == _p("job_id", Uuid())
            )

        return Bound(self._once("fence_state", build), {"jq_job_id": job_id})

    # -- anyone's moves --------------------------------------------------------------------

    def cancel(self, job_id: UUID, owner_id: str | None = None) -> Bound:
        """Cancel a job that may still move to ``cancelled`` (pending or processing).

        Only the statuses the table of moves allows are matched, so a finished job is never
        reopened; with ``owner_id`` only that owner's job matches (an end user's cancel).
        A running job's worker learns of it at its next fenced write or its cancel check.
        """
        by_owner = owner_id is not None

        def build() -> Any:
            c = self.t.c
            now = DbNow()
            where = [
                c.id == _p("job_id", Uuid()),
                c.status.in_(_in(sources_of(Status.CANCELLED))),
            ]
            if by_owner:
                where.append(c.owner_id == _p("owner_id", Text()))
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
        return Bound(self._once(("cancel", by_owner), build), params)

    def retry(self, job_id: UUID) -> Bound:
        """An operator's retry of a ``failed`` or ``cancelled`` job: one more attempt, now."""

        def build() -> Any:
            c = self.t.c
            now = DbNow()
            final_sources = [s for s in sources_of(Status.PENDING) if s.is_final]
            return (
                update(self.t)
                .where(c.id == _p("job_id", Uuid()), c.status.in_(_in(final_sources)))
                .values(
                    status=Status.PENDING.value,
                    run_at=now,
                    max_attempts=self._at_least_one_more(),
                    locked_by=None,
                    lease_expires_at=None,
                    completed_at=None,
                    updated_at=now,
                )
                .returning(*self.columns)
            )

        return Bound(self._once("retry", build), {"jq_job_id": job_id})

    def reap(self) -> Bound:
        """Return jobs whose lease expired to ``pending``, or fail them when out of attempts."""

        def build() -> Any:
            c = self.t.c
            now = DbNow()
            spent = c.attempts >= c.max_attempts
            message = self._lost_lease_message()
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

        return Bound(self._once("reap", build), None)

    # -- reading ---------------------------------------------------------------------------

    def get(self, job_id: UUID, owner_id: str | None = None) -> Bound:
        """One job by id; with ``owner_id`` only when it belongs to that owner, so an end
        user cannot read another user's job by guessing its id."""
        by_owner = owner_id is not None

        def build() -> Any:
            c = self.t.c
            stmt = select(*self.columns).where(c.id == _p("job_id", Uuid()))
            if by_owner:
                stmt = stmt.where(c.owner_id == _p("owner_id", Text()))
            return stmt

        params: dict[str, Any] = {"jq_job_id": job_id}
        if by_owner:
            params["jq_owner_id"] = owner_id
        return Bound(self._once(("get", by_owner), build), params)

    def list(
        self,
        *,
        owner_id: str | None,
        statuses: Sequence[Status] | None,
        queue: str | None,
        kind: str | None,
        since: datetime | float | None,
        limit: int,
    ) -> Bound:
        """Newest first. ``since`` is a time, or a number of seconds back from now."""
        chosen = tuple(_in(statuses)) if statuses else None
        since_kind = None if since is None else "at" if isinstance(since, datetime) else "ago"
        shape = ("list", owner_id is not None, chosen, queue is not None, kind is not None)

        def build() -> Any:
            c = self.t.c
            stmt = select(*self.columns)
            if owner_id is not None:
                stmt = stmt.where(c.owner_id == _p("owner_id", Text()))
            if chosen:
                stmt = stmt.where(c.status.in_(list(chosen)))
            if queue is not None:
                stmt = stmt.where(c.queue == _p("queue", Text()))
            if kind is not None:
                stmt = stmt.where(c.kind == _p("kind", Text()))
            if since_kind == "at":
                stmt = stmt.where(c.created_at >= _p("since", UTCDateTime()))
            elif since_kind == "ago":
                stmt = stmt.where(c.created_at >= DbNowPlus(_p("since", Float())))
            return stmt.order_by(c.created_at.desc(), c.id.desc()).limit(_p("limit", Integer()))

        params: dict[str, Any] = {"jq_limit": limit}
        for name, value in (("owner_id", owner_id), ("queue", queue), ("kind", kind)):
            if value is not None:
                params[f"jq_{name}"] = value
        if since_kind == "at":
            params["jq_since"] = since
        elif since_kind == "ago":
            assert not isinstance(since, datetime) and since is not None
            params["jq_since"] = -since
        return Bound(self._once((*shape, since_kind), build), params)

    def stats(self, since_seconds: float) -> Bound:
        """The seed's statistics: jobs per status and their mean creation-to-finish time."""

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
            return (
                select(
                    c.status,
                    func.count().label("count"),
                    func.avg(seconds).label("avg_duration_sec"),
                )
                .where(c.created_at > DbNowPlus(_p("back", Float())))
                .group_by(c.status)
                .order_by(c.status)
            )

        return Bound(self._once("stats", build), {"jq_back": -since_seconds})

    def prune(self, older_than_seconds: float, statuses: Sequence[Status]) -> Bound:
        """Delete jobs in the given (final) statuses that finished more than
        ``older_than_seconds`` ago by the database clock; RETURNING says how many.

        The age is measured from ``completed_at``, not creation, so a job that ran for days
        is kept for the full retention period after it ended.
        """
        chosen = tuple(_in(statuses))

        def build() -> Any:
            c = self.t.c
            return (
                delete(self.t)
                .where(
                    c.status.in_(list(chosen)),
                    c.completed_at < DbNowPlus(_p("back", Float())),
                )
                .returning(c.id)
            )

        return Bound(self._once(("prune", chosen), build), {"jq_back": -older_than_seconds})
