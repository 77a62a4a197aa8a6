"""What every statement builder shares: the cache of built statements, the fence, the error
history entry, and the ways a batch of values travels as parameters.

Values always travel as bound parameters, never inside a statement: a statement is built
once per table and shape (`StatementsBase.once`) and reused with new parameters. Building
a SQLAlchemy construct costs far more than running it (docs/performance.md, "What each
optimisation bought"), and one construct per shape is also what lets SQLAlchemy's
compiled cache and the driver's prepared statements hit on every call.

Parameters are named ``jq_<name>`` (`param`), so they never clash with column names;
the one exception is the plain INSERT of new jobs (`Enqueueing._insert_values`: one job,
and SQLite's batches), whose parameters are the columns' own names, so that the rows
`jobqueue.validation.new_job_row` makes are sent as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Table,
    Text,
    Uuid,
    and_,
    bindparam,
    case,
    cast,
    column,
    func,
    literal_column,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.types import TypeEngine

from ..models import JSON_COLUMNS, Status
from .dialect import (
    DbNow,
    DbNowAfter,
    DbNowPlus,
    DbNowText,
    JsonAppend,
    UTCDateTime,
    sqlite_time,
)
from .steps import Query
from .table import limits_table

T = TypeVar("T")

#: Statement shapes kept per builder (shapes differ by filters, e.g. the queues a worker
#: claims from); past this the cache starts over rather than grow without bound.
MAX_SHAPES = 256

DIALECTS = ("postgresql", "sqlite")


def param(name: str, type_: Any) -> BindParameter[Any]:
    """The bound parameter ``jq_<name>``."""
    return bindparam(f"jq_{name}", type_=type_)


def status_values(statuses: Sequence[Status]) -> list[str]:
    return [s.value for s in statuses]


def unnest(arrays: Sequence[tuple[str, str, TypeEngine[Any]]], name: str) -> Any:
    """A PostgreSQL ``unnest`` of array parameters as a table ``name``.

    ``arrays`` are ``(column, parameter, element type)``: one array parameter per column, so
    a batch of any size is one statement with one cached plan.
    """
    return (
        func.unnest(*(param(p, postgresql.ARRAY(type_)) for _, p, type_ in arrays))
        .table_valued(*(column(col, type_) for col, _, type_ in arrays))
        .render_derived(name=name)
    )


def json_rows(columns: Sequence[tuple[str, TypeEngine[Any]]], name: str) -> Any:
    """A SQLite batch as a table ``name``: its rows sent as one JSON array of arrays (the
    ``jq_batch`` parameter, see `batch_json`) and read with ``json_each``.

    One parameter, so one statement for any batch size, compiled once and cached; a VALUES
    list would be compiled again on every call, one bound parameter per cell.
    """
    each = func.json_each(param("batch", Text())).table_valued("value")
    return select(
        *(
            func.json_extract(each.c.value, literal_column(f"'$[{i}]'"), type_=type_).label(col)
            for i, (col, type_) in enumerate(columns)
        )
    ).subquery(name)


def batch_json(rows: Iterable[Sequence[Any]]) -> str:
    """Rows for `json_rows`, as SQLite stores their values: ids as 32 hex digits, times
    as UTC text (`sqlite_time`)."""
    return json.dumps(
        [
            [
                v.hex if isinstance(v, UUID) else sqlite_time(v) if isinstance(v, datetime) else v
                for v in row
            ]
            for row in rows
        ]
    )


def json_param(name: str, dialect: str) -> ColumnElement[Any]:
    """A bound parameter holding JSON text (as `jobqueue.validation.encode_json` encoded
    it), for a JSON column: cast to ``jsonb`` on PostgreSQL; SQLite stores the text as it
    is."""
    p = param(name, Text())
    return cast(p, postgresql.JSONB()) if dialect == "postgresql" else p


def filter_params(queues: Sequence[str] | None, kinds: Sequence[str] | None) -> dict[str, str]:
    """The values of a claim's queue and kind parameters (one per name, see `claim`)."""
    out = {f"jq_queue_{i}": q for i, q in enumerate(queues or ())}
    out.update({f"jq_kind_{i}": k for i, k in enumerate(kinds or ())})
    return out


def fence_params(
    job_id: UUID, attempt: int, started: datetime | None, **more: Any
) -> dict[str, Any]:
    """The parameters of `StatementsBase.fence` for one held job, and ``more``."""
    return {"jq_job_id": job_id, "jq_attempt": attempt, "jq_started": started, **more}


#: The columns of a SQLite batch of held claims (`heartbeat_many`) and of completions.
HELD_COLUMNS: list[tuple[str, TypeEngine[Any]]] = [
    ("job_id", Uuid()),
    ("attempt", Integer()),
    ("started", UTCDateTime()),
]
COMPLETION_COLUMNS = [
    *HELD_COLUMNS,
    ("result", Text()),
    ("result_url", Text()),
    # As SQLite stores it (`Money`): whole millionths, written to the column as they are.
    ("cost", Integer()),
    ("cost_unit", Text()),
]


class BuiltOnce:
    """Statements for one dialect, each built once per shape (see the module's docstring)."""

    def __init__(self, dialect: str) -> None:
        if dialect not in DIALECTS:
            raise ValueError(f"unsupported dialect {dialect!r}")
        self.dialect = dialect
        self._shapes: dict[Hashable, Any] = {}

    def once(self, key: Hashable, build: Callable[[], T]) -> T:
        """The statement for ``key``, built on first use."""
        found = self._shapes.get(key)
        if found is None:
            if len(self._shapes) >= MAX_SHAPES:
                self._shapes.clear()
            found = self._shapes[key] = build()
        return found

    def now(self) -> Query:
        """The database clock (one row: ``now``)."""
        return Query(self.once("now", lambda: select(DbNow().label("now"))), None)


class StatementsBase(BuiltOnce):
    """One jobs table on one dialect (``postgresql`` or ``sqlite``), and what the
    statement builders of every topic share."""

    def __init__(self, table: Table, dialect: str) -> None:
        super().__init__(dialect)
        self.t = table
        #: The limits every worker enforces on this table's jobs (`jobqueue.sql.limits`).
        self.limits = limits_table(table.name, table.schema, table.metadata)
        #: What every statement that returns jobs returns: the table's columns, the JSON
        #: ones as their text (see `_as_text`).
        self.columns: list[ColumnElement[Any]] = [self._as_text(c) for c in table.c]

    def one_job(
        self,
        name: str,
        columns: Callable[[], Sequence[Any]],
        job_id: UUID,
        owner_id: str | None,
    ) -> Query:
        """``columns`` of one job by id; with ``owner_id`` only when it belongs to that
        owner, so an end user cannot read another user's job by guessing its id. The
        statement is built once per ``name`` and whether an owner is given."""
        by_owner = owner_id is not None

        def build() -> Any:
            c = self.t.c
            stmt = select(*columns()).where(c.id == param("job_id", Uuid()))
            if by_owner:
                stmt = stmt.where(c.owner_id == param("owner_id", Text()))
            return stmt

        params: dict[str, Any] = {"jq_job_id": job_id}
        if by_owner:
            params["jq_owner_id"] = owner_id
        return Query(self.once((name, by_owner), build), params)

    def _as_text(self, col: Any) -> ColumnElement[Any]:
        """A JSON column as its text, for `jobqueue.validation.read_job` to decode row by row.

        A row a client wrote may hold JSON that Python's decoder refuses (a number of
        thousands of digits, nesting thousands deep). Decoded by the driver, it would fail
        the whole result, every other job of a claim batch with it; as text it cannot fail.
        """
        if col.name not in JSON_COLUMNS:
            return col  # type: ignore[no-any-return]
        if self.dialect == "postgresql":
            return cast(col, Text()).label(col.name)
        return type_coerce(col, Text()).label(col.name)

    def returned(self) -> dict[str, TypeEngine[Any]]:
        """Every column's name and type: what RETURNING of `columns` gives, for a `Direct`."""
        return self.once("returned", lambda: {c.name: c.type for c in self.columns})

    def fence(self, batch: Any = None) -> ColumnElement[bool]:
        """The fencing condition: this job, in this claim of this attempt, still processing.

        The claim is each row of ``batch`` (a FROM clause with the columns ``job_id``,
        ``attempt`` and ``started``), or, without one, the held job whose values
        `fence_params` gives. ``started_at`` tells two claims of the same attempt number
        apart: a released job gets its attempt back (``attempts`` goes down by one), so the
        next claim has the number of the released one again, but a later ``started_at``
        (see `claim`).
        """
        if batch is None:
            job_id: Any = param("job_id", Uuid())
            attempt: Any = param("attempt", Integer())
            started: Any = param("started", UTCDateTime())
        else:
            job_id, attempt, started = batch.c.job_id, batch.c.attempt, batch.c.started
        c = self.t.c
        return and_(
            c.id == job_id,
            c.attempts == attempt,
            c.started_at == started,
            c.status == Status.PROCESSING.value,
        )

    def place_in_line(self) -> ColumnElement[Any]:
        """``run_at`` for a job handed back to the queue without a retry backoff (a lease
        that expired, a release): its own, so it keeps its place in line ahead of the jobs
        enqueued after it, or now when a row written by another client holds a later one
        (a job being handed back is due)."""
        c = self.t.c
        now = DbNow()
        return case((c.run_at <= now, c.run_at), else_=now)

    def claimed(self) -> dict[str, Any]:
        """What a claim writes (for ``jq_worker_id``, for ``jq_lease`` seconds): the one
        move into ``processing``, shared by the plain claim and the claim within limits."""
        c = self.t.c
        return {
            "status": Status.PROCESSING.value,
            "attempts": c.attempts + 1,
            "locked_by": param("worker_id", Text()),
            # Later than any earlier claim of the job, even within the clock's step: part
            # of the fencing token (see `fence`).
            "started_at": DbNowAfter(c.started_at),
            "lease_expires_at": DbNowPlus(param("lease", Float())),
            "updated_at": DbNow(),
            # Each attempt starts its own progress: nothing carries over from a released,
            # retried or expired attempt.
            "progress": 0,
            "progress_message": None,
        }

    def before_deadline(self) -> ColumnElement[bool]:
        """A job that may still start: no start deadline, or one still ahead by the database
        clock. Every claim takes only such jobs, so a job past its deadline never reaches
        a handler; `expire` moves it to ``expired``."""
        c = self.t.c
        return or_(c.start_by.is_(None), c.start_by > DbNow())

    def lost_lease_message(self) -> ColumnElement[str]:
        """The error recorded for an attempt whose lease expired (claim and reap)."""
        held_by = func.coalesce(self.t.c.locked_by, literal_column("'unknown worker'"))
        return literal_column("'lease expired while held by '", Text()).concat(held_by)

    def error_entry(self, message: ColumnElement[Any]) -> JsonAppend:
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

    def added_cost(self, amount: ColumnElement[Any], unit: ColumnElement[Any]) -> dict[str, Any]:
        """What an outcome that reports a cost writes: ``amount`` added to the job's cost
        (NULL adds nothing, and leaves a job that never reported one at NULL), and ``unit``
        as its unit when given. Every writer of an outcome (completion, failure) uses it,
        so a job that cost money keeps its cost whatever it comes to."""
        c = self.t.c
        return {
            "cost": case(
                (amount.is_(None), c.cost),
                else_=func.coalesce(c.cost, literal_column("0")) + amount,
            ),
            "cost_unit": func.coalesce(unit, c.cost_unit),
        }

    def at_least_one_more(self) -> ColumnElement[int]:
        """``max_attempts``, raised to leave one more attempt when none is left."""
        c = self.t.c
        return case((c.max_attempts > c.attempts, c.max_attempts), else_=c.attempts + 1)
