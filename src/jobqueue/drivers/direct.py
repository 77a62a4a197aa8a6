"""The fast path: a hot statement (`jobqueue.sql.steps.Direct`) run on the driver
connection itself, without SQLAlchemy's per-execution work.

The statement is still built and compiled by SQLAlchemy (once per statement and dialect,
here), with SQLAlchemy's own type processing of every parameter and result value; only the
execution skips SQLAlchemy's execution context, events and result objects, which cost more
client time than the server takes to insert or claim one job (docs/performance.md,
"Statement execution", has the measurements). The runners (`jobqueue.drivers.runner`) use
it only on a connection of the queue's own: on psycopg and asyncpg in autocommit mode,
where there is no transaction for SQLAlchemy (or the asyncpg adapter, which begins its
transactions lazily) to keep track of, and on SQLite (sqlite3, aiosqlite) also in the
transactions the queue begins (`jobqueue.drivers.raw.supported`); anywhere else a `Direct`
step runs as any statement does. On aiosqlite the statement, its rows and the closing of
its cursor take one trip to the connection's thread instead of four
(`jobqueue.drivers.sqlite_thread` runs whole transactions there).

The SQLAlchemy interfaces this relies on are listed where the version range is pinned
(``pyproject.toml``); ``tests/drivers/test_direct.py`` checks, statement by statement and
driver by driver, that the fast path sends the same SQL and returns the same rows and
errors as SQLAlchemy's own execution.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import aiosqlite
from psycopg import AsyncRawCursor, RawCursor
from sqlalchemy import Connection, Dialect, Executable, Float
from sqlalchemy.ext.asyncio import AsyncConnection

from ..sql.steps import Direct, Query, Row, Rows, Step
from . import plans
from .raw import driver_connection, driver_connection_async, driver_errors, driver_errors_async

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A statement compiled for one dialect, with its type processors."""

    statement: Executable  # kept so that the cache key (its id) stays unique
    sql: str
    positional: tuple[str, ...] | None  # asyncpg $n or SQLite ? order; None: named (psycopg)
    compiled: Any
    binds: Mapping[str, Processor]
    results: Mapping[str, Processor]
    #: Whether the statement has parameters expanded as it runs (an IN list): its SQL
    #: text is then made for each run (`expanded`).
    expanding: bool
    #: On psycopg, the SQL with PostgreSQL's own ``$n`` placeholders and the parameter
    #: names in their order (`native_sql`), for a raw cursor; None where not used.
    native: tuple[str, tuple[str, ...]] | None = None

    def params(self, given: Mapping[str, Any]) -> Any:
        values = self.compiled.construct_params(given)
        for key, process in self.binds.items():
            if process is not None:
                values[key] = process(values[key])
        if self.positional is None:
            return values
        return [values[key] for key in self.positional]

    def expanded(self, given: Mapping[str, Any]) -> tuple[str, Any]:
        """The SQL text and parameters of a statement that is `expanding`, for ``given``:
        each IN list's values in place, as SQLAlchemy expands them."""
        state = self.compiled.construct_expanded_state(given)
        values = dict(state.parameters)
        for key, value in values.items():
            process = state.processors.get(key) or self.binds.get(key)
            if process is not None:
                values[key] = process(value)
        if state.positiontup is None:
            return state.statement, values
        return state.statement, [values[key] for key in state.positiontup]

    def native_params(self, given: Mapping[str, Any]) -> list[Any]:
        """The parameters for `native` SQL: in ``$n`` order."""
        assert self.native is not None
        values = self.params(given)
        return [values[key] for key in self.native[1]]

    def sent(self, given: Mapping[str, Any]) -> tuple[str, Any]:
        """The SQL text and parameters for ``given``."""
        return self.expanded(given) if self.expanding else (self.sql, self.params(given))

    def row(self, names: Sequence[str], values: Sequence[Any]) -> Row:
        """One row of values as a dict by ``names`` (see `rows`)."""
        return self.rows(names, [values])[0]

    def rows(self, names: Sequence[str], records: Sequence[Sequence[Any]]) -> Rows:
        """``records`` as dicts by ``names``, each value processed by its column's type:
        the columns that have a processor are looked up once per result, not per row."""
        processed = [
            (name, process) for name in names if (process := self.results.get(name)) is not None
        ]
        out: Rows = []
        for values in records:
            row = dict(zip(names, values, strict=True))
            for name, process in processed:
                value = row[name]
                if value is not None:
                    row[name] = process(value)
            out.append(row)
        return out


_compiled: dict[tuple[int, str, str, bool], _Compiled] = {}


def _compile(step: Query, dialect: Dialect) -> _Compiled:
    """``step`` compiled for ``dialect``: a `Direct` step's result values are processed by
    the types it names, any other query's by its statement's own result columns (as
    SQLAlchemy processes them; a textual statement's values come as the driver reads
    them, as from SQLAlchemy)."""
    hot = isinstance(step, Direct)
    key = (id(step.statement), dialect.name, dialect.driver, hot)
    found = _compiled.get(key)
    if found is not None and found.statement is step.statement:
        return found
    statement: Any = step.statement
    compiled: Any = statement.compile(dialect=dialect)
    # Keyed by the names the compiled SQL uses (anonymous parameters, such as literals in
    # a CASE, have other keys in ``compiled.binds``).
    binds = {
        compiled.bind_names[bind]: bind.type.dialect_impl(dialect).bind_processor(dialect)
        for bind in compiled.binds.values()
    }
    returning = (
        step.returning
        if isinstance(step, Direct)
        else {column.keyname: column.type for column in compiled._result_columns}
    )
    results = {name: _result_processor(type_, dialect) for name, type_ in returning.items()}
    positional = tuple(compiled.positiontup) if compiled.positiontup else None
    expanding = bool(compiled.post_compile_params or compiled.literal_execute_params)
    native = None
    if hot and not expanding and dialect.driver in ("psycopg", "psycopg_async"):
        native = native_sql(compiled.string)
    found = _Compiled(
        step.statement, compiled.string, positional, compiled, binds, results, expanding, native
    )
    if len(_compiled) > 256:  # statements are built once per queue: this stays tiny
        _compiled.clear()
    _compiled[key] = found
    return found


_PLACEHOLDER = re.compile(r"%(?:\(([^)]+)\)s|%)")


def native_sql(sql: str) -> tuple[str, tuple[str, ...]]:
    """``sql`` in psycopg's named style (``%(name)s``, ``%%``) with PostgreSQL's own
    ``$n`` placeholders instead, and the names in ``$n`` order: a name used twice is one
    parameter, as psycopg itself converts it.

    psycopg converts a query's placeholders on every execution and caches the result only
    for queries of at most 4 kB; `complete_and_claim` is longer, and converting it again
    cost more client time than all the rest of the statement's execution. Done once here,
    the statement runs on a raw cursor (`psycopg.RawCursor`), which sends the text as it is
    (``tests/drivers/test_direct.py`` checks it is what psycopg's conversion sends).
    """
    order: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"
        if name not in order:
            order[name] = len(order) + 1
        return f"${order[name]}"

    return _PLACEHOLDER.sub(number, sql), tuple(order)


def sqlite_runs(step: Step) -> TypeGuard[Query]:
    """Whether `sqlite_rows` runs ``step`` as SQLAlchemy would: a query with one
    parameter set, or none. A list of parameter sets (an INSERT of many rows) and a COPY
    are SQLAlchemy's to run."""
    return isinstance(step, Query) and (step.params is None or isinstance(step.params, Mapping))


def sqlite_rows(raw: sqlite3.Connection, step: Query, dialect: Dialect) -> Rows:
    """Run ``step`` (one that `sqlite_runs`) on a sqlite3 connection (on its own thread);
    the rows as dicts."""
    c = _compile(step, dialect)
    cursor = raw.execute(*c.sent(step.params if isinstance(step.params, Mapping) else {}))
    try:
        names = [d[0] for d in cursor.description or ()]
        return c.rows(names, cursor.fetchall())
    finally:
        cursor.close()


def _result_processor(type_: Any, dialect: Any) -> Any:
    """How a result column is converted. A float column needs nothing: both drivers give
    Python floats (and psycopg's processor wants the column's type code, unknown here)."""
    impl = type_.dialect_impl(dialect)
    if isinstance(impl, Float) and not impl.asdecimal:
        return None
    return impl.result_processor(dialect, None)


def run_direct(conn: Connection, step: Direct) -> Rows:
    """Run ``step`` on a sync connection's psycopg or sqlite3 connection; the rows as
    dicts."""
    c = _compile(step, conn.dialect)
    raw: Any = driver_connection(conn)
    with driver_errors(conn, raw, c.sql):
        if isinstance(raw, sqlite3.Connection):
            return sqlite_rows(raw, step, conn.dialect)
        if c.native is not None:
            cursor = RawCursor(raw)
            mode = plans.switch_to(conn, raw, conn.engine, step.generic)
            if mode is not None:
                cursor.execute(mode)
                plans.switched(raw, step.generic)
            cursor.execute(c.native[0], c.native_params(step.params))
        else:
            cursor = raw.execute(c.sql, c.params(step.params))
        return c.rows(_names(cursor), cursor.fetchall())


async def run_direct_async(conn: AsyncConnection, step: Direct) -> Rows:
    """Run ``step`` on an async connection's psycopg, asyncpg or aiosqlite connection."""
    c = _compile(step, conn.dialect)
    raw: Any = await driver_connection_async(conn)
    async with driver_errors_async(conn, raw, c.sql):
        if isinstance(raw, aiosqlite.Connection):
            # One trip to the connection's thread (aiosqlite's way to run a function there).
            run: Any = raw._execute
            rows: Rows = await run(sqlite_rows, raw._conn, step, conn.dialect)
            return rows
        if c.positional is not None:  # asyncpg
            records = await raw.fetch(c.sql, *c.params(step.params))
            return c.rows(list(records[0].keys()) if records else [], records)
        if c.native is not None:
            cursor = AsyncRawCursor(raw)
            mode = plans.switch_to(conn, raw, conn.sync_engine, step.generic)
            if mode is not None:
                await cursor.execute(mode)
                plans.switched(raw, step.generic)
            await cursor.execute(c.native[0], c.native_params(step.params))
        else:
            cursor = await raw.execute(c.sql, c.params(step.params))
        return c.rows(_names(cursor), await cursor.fetchall())


def _names(cursor: Any) -> list[str]:
    """The column names of a psycopg cursor's result, read from the result itself:
    ``cursor.description`` builds a column object, with its type looked up, per column."""
    result = cursor.pgresult
    if result is None or not result.nfields:
        return []
    encoding = cursor.connection.info.encoding
    return [result.fname(i).decode(encoding) for i in range(result.nfields)]


def sent(step: Query, dialect: Dialect) -> tuple[str, Any]:
    """The SQL text and parameters `run_direct` (or `sqlite_rows`) sends the driver for
    ``step`` (a dict for psycopg, a list in ``$n`` order for asyncpg): what an EXPLAIN must
    explain."""
    c = _compile(step, dialect)
    return c.sent(step.params if isinstance(step.params, Mapping) else {})
