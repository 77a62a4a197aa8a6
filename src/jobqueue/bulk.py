"""The one place that talks to a PostgreSQL driver directly: COPY for `enqueue_many`, and
`Direct` statements (one job's INSERT) run without SQLAlchemy's per-execution work.

COPY streams rows in PostgreSQL's copy format, with no statement to parse or plan, no
array parameters to build and decode, and no RETURNING rows to send back: for a batch of
thousands of jobs it is several times faster than the best INSERT. SQLAlchemy has no COPY,
so this module reaches the driver's own connection under the SQLAlchemy connection
(psycopg 3 sync and async, asyncpg) and runs COPY there, inside whatever transaction (or
autocommit) the SQLAlchemy connection is in. Nothing else in jobqueue knows the drivers.

Behind a transaction-mode pooler (PgBouncer) COPY works as any other statement does: it
is one statement, or part of the caller's transaction.

A `Direct` statement is still built and compiled by SQLAlchemy (once per statement and
dialect) with SQLAlchemy's own type processing of parameters and results; only the
execution skips SQLAlchemy's execution context, events and result objects, which cost more
Python time (about 150 µs) than the server takes to insert one job. It runs so only on a
connection of the queue's own in autocommit mode, where there is no transaction for
SQLAlchemy (or the asyncpg adapter, which begins its transactions lazily) to keep track of;
anywhere else it runs as any statement does.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from sqlalchemy import Connection, Dialect, Executable
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator, TypeEngine


@dataclass(frozen=True, slots=True)
class CopyRows:
    """A step of an operation: COPY ``records`` (tuples in ``columns`` order) into a table.

    It stands where a SQLAlchemy statement would, and counts as a write (``is_dml``).
    ``records`` may be lazy: it is read once, while the rows are sent. ``types`` are the
    columns' SQLAlchemy types (see `_as_text`).
    """

    schema: str | None
    table: str
    columns: tuple[str, ...]
    types: tuple[TypeEngine[Any], ...]
    records: Iterable[tuple[Any, ...]]

    is_dml = True

    @property
    def sql(self) -> str:
        name = f'"{self.schema}"."{self.table}"' if self.schema else f'"{self.table}"'
        return f"COPY {name} ({', '.join(self.columns)}) FROM STDIN"


def copy_rows(conn: Connection, step: CopyRows) -> None:
    """Run ``step`` on a sync SQLAlchemy connection (psycopg 3)."""
    raw: Any = conn.connection.driver_connection
    with (
        _driver_errors(conn, raw, step.sql),
        raw.cursor() as cursor,
        cursor.copy(step.sql) as copy,
    ):
        write = copy.write_row
        for record in _as_text(step):
            write(record)


async def copy_rows_async(conn: AsyncConnection, step: CopyRows) -> None:
    """Run ``step`` on an async SQLAlchemy connection (psycopg 3 or asyncpg)."""
    raw: Any = await _driver_connection(conn)
    async with _driver_errors_async(conn, raw, step.sql):
        if hasattr(raw, "copy_records_to_table"):  # asyncpg
            # Binary format; asyncpg reads the (lazy) records as it sends them.
            await raw.copy_records_to_table(
                step.table,
                records=step.records,
                columns=list(step.columns),
                schema_name=step.schema,
            )
            return
        async with raw.cursor() as cursor, cursor.copy(step.sql) as copy:
            write = copy.write_row
            for record in _as_text(step):
                await write(record)


async def _driver_connection(conn: AsyncConnection) -> Any:
    """The driver connection under an async connection: read from its sync twin when it is
    in use (always, here) instead of `AsyncConnection.get_raw_connection`, which costs a
    greenlet switch (a tenth of the Python time of an `enqueue`)."""
    if conn.sync_connection is not None and not conn.sync_connection.closed:
        return conn.sync_connection.connection.driver_connection
    return (await conn.get_raw_connection()).driver_connection


def _as_text(step: CopyRows) -> Iterator[Sequence[Any]]:
    """``step``'s records with uuids and times as text, for psycopg's text COPY.

    psycopg formats a ``str`` several times faster than a ``UUID`` or a ``datetime`` (COPY
    of 50,000 jobs into a bare table: 10.4 -> 4.6 µs a row), and a batch shares one clock
    reading, so each distinct time is formatted once.
    """
    kinds = [_python_type(t) for t in step.types]
    uuids = [i for i, kind in enumerate(kinds) if kind is uuid.UUID]
    times = [i for i, kind in enumerate(kinds) if kind is datetime]
    formatted: dict[datetime, str] = {}
    for record in step.records:
        values = list(record)
        for i in uuids:
            if values[i] is not None:
                values[i] = str(values[i])
        for i in times:
            moment = values[i]
            if moment is not None:
                text = formatted.get(moment)
                if text is None:
                    text = formatted[moment] = moment.isoformat()
                values[i] = text
        yield values


def _python_type(type_: TypeEngine[Any]) -> Any:
    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    try:
        return type_.python_type
    except NotImplementedError:
        return None


def _lost(raw: Any) -> bool:
    """Whether the driver connection is gone (closed, or broken mid-statement)."""
    if hasattr(raw, "is_closed"):  # asyncpg
        return bool(raw.is_closed())
    return bool(raw.closed or raw.broken)


@contextmanager
def _driver_errors(conn: Connection, raw: Any, sql: str) -> Iterator[None]:
    """Driver errors of a statement run on ``raw`` as SQLAlchemy would raise them, and a
    lost connection invalidated (as SQLAlchemy does: the pool must not hand it out again)."""
    try:
        yield
    except Exception as exc:
        if _lost(raw):
            conn.invalidate()
        _reraise(sql, exc, raw)


@asynccontextmanager
async def _driver_errors_async(conn: AsyncConnection, raw: Any, sql: str) -> AsyncIterator[None]:
    """`_driver_errors` for an async connection."""
    try:
        yield
    except Exception as exc:
        if _lost(raw):
            await conn.invalidate()
        _reraise(sql, exc, raw)


def _reraise(sql: str, exc: Exception, raw: Any) -> NoReturn:
    wrapped = _as_dbapi_error(sql, exc, raw)
    if wrapped is exc:
        raise exc
    raise wrapped from exc


def _as_dbapi_error(sql: str, exc: Exception, raw: Any) -> Exception:
    """A driver error as SQLAlchemy would have raised it for a statement, so our error
    translation (permission denied, missing table, lost connection) applies here too.
    Our own errors (raised while the records were made) pass through unchanged."""
    module = type(exc).__module__.split(".")[0]
    if module not in ("psycopg", "asyncpg"):
        return exc
    wrapped = sa_exc.DBAPIError.instance(
        sql, None, exc, Exception, hide_parameters=True, connection_invalidated=_lost(raw)
    )
    return wrapped if isinstance(wrapped, Exception) else exc


@dataclass(frozen=True, slots=True)
class Direct:
    """A step: ``statement`` with ``params``, run on the driver connection when the queue
    runs it in its own autocommit connection (see the module's docstring). ``returning``
    names the result columns and their types (for SQLAlchemy's result processing)."""

    statement: Executable
    params: Mapping[str, Any]
    returning: Mapping[str, TypeEngine[Any]]

    @property
    def is_dml(self) -> bool:
        return bool(getattr(self.statement, "is_dml", False))


Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A `Direct` statement compiled for one dialect, with its type processors."""

    statement: Executable  # kept so that the cache key (its id) stays unique
    sql: str
    positional: tuple[str, ...] | None  # asyncpg's $1, $2 ... order; None: named (psycopg)
    compiled: Any
    binds: Mapping[str, Processor]
    results: Mapping[str, Processor]

    def params(self, given: Mapping[str, Any]) -> Any:
        values = self.compiled.construct_params(given)
        for key, process in self.binds.items():
            if process is not None:
                values[key] = process(values[key])
        if self.positional is None:
            return values
        return [values[key] for key in self.positional]

    def row(self, names: Sequence[str], values: Sequence[Any]) -> dict[str, Any]:
        out = {}
        for name, value in zip(names, values, strict=True):
            process = self.results.get(name)
            out[name] = value if process is None or value is None else process(value)
        return out


_compiled: dict[tuple[int, str, str], _Compiled] = {}


def _compile(step: Direct, dialect: Dialect) -> _Compiled:
    key = (id(step.statement), dialect.name, dialect.driver)
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
    results = {
        name: type_.dialect_impl(dialect).result_processor(dialect, None)
        for name, type_ in step.returning.items()
    }
    positional = tuple(compiled.positiontup) if compiled.positiontup else None
    found = _Compiled(step.statement, compiled.string, positional, compiled, binds, results)
    if len(_compiled) > 256:  # statements are built once per queue: this stays tiny
        _compiled.clear()
    _compiled[key] = found
    return found


def run_direct(conn: Connection, step: Direct) -> list[Mapping[str, Any]]:
    """Run ``step`` on a sync connection's psycopg connection; the rows as dicts."""
    c = _compile(step, conn.dialect)
    raw: Any = conn.connection.driver_connection
    with _driver_errors(conn, raw, c.sql):
        cursor = raw.execute(c.sql, c.params(step.params))
        names = [d.name for d in cursor.description or ()]
        return [c.row(names, values) for values in cursor.fetchall()]


async def run_direct_async(conn: AsyncConnection, step: Direct) -> list[Mapping[str, Any]]:
    """Run ``step`` on an async connection's psycopg or asyncpg connection."""
    c = _compile(step, conn.dialect)
    raw: Any = await _driver_connection(conn)
    async with _driver_errors_async(conn, raw, c.sql):
        if c.positional is not None:  # asyncpg
            records = await raw.fetch(c.sql, *c.params(step.params))
            return [c.row(list(r.keys()), list(r.values())) for r in records]
        cursor = await raw.execute(c.sql, c.params(step.params))
        names = [d.name for d in cursor.description or ()]
        return [c.row(names, values) for values in await cursor.fetchall()]
