"""COPY: the fastest way to write many new jobs (`enqueue_many` on PostgreSQL).

COPY streams rows in PostgreSQL's copy format, with no statement to parse or plan, no
array parameters to build and decode, and no RETURNING rows to send back: for a batch of
thousands of jobs it beats the best INSERT (docs/performance.md). SQLAlchemy has no COPY,
so a `CopyRows` step runs on the driver's own connection under the SQLAlchemy connection
(psycopg 3 sync and async, asyncpg), inside whatever transaction (or autocommit) the
SQLAlchemy connection is in.

Both drivers send COPY's binary format: each value in its type's binary form, which
psycopg's C code writes (and the server reads) for less than their text (a time's text,
above all, takes the server a parse per value).

Behind a transaction-mode pooler (PgBouncer) COPY works as any other statement does: it
is one statement, or part of the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from psycopg import AsyncCursor, Cursor
from psycopg.adapt import Dumper
from psycopg.postgres import types as pg_types
from psycopg.pq import Format
from sqlalchemy import Connection, Dialect
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

from ..sql.steps import CopyRows
from .raw import driver_connection, driver_connection_async, driver_errors, driver_errors_async


def copy_rows(conn: Connection, step: CopyRows) -> None:
    """Run ``step`` on a sync SQLAlchemy connection (psycopg 3)."""
    raw: Any = driver_connection(conn)
    sql = _binary(step.sql)
    with driver_errors(conn, raw, sql), raw.cursor() as cursor:
        names = _wire_types(step.types)
        _prepare(cursor)
        with cursor.copy(sql) as copy:
            copy.set_types(names)
            write = copy.write_row
            for record in step.records:
                write(record)


async def copy_rows_async(conn: AsyncConnection, step: CopyRows) -> None:
    """Run ``step`` on an async SQLAlchemy connection (psycopg 3 or asyncpg)."""
    raw: Any = await driver_connection_async(conn)
    if hasattr(raw, "copy_records_to_table"):  # asyncpg
        async with driver_errors_async(conn, raw, step.sql):
            # Binary format too; asyncpg reads the (lazy) records as it sends them.
            await raw.copy_records_to_table(
                step.table,
                records=step.records,
                columns=list(step.columns),
                schema_name=step.schema,
            )
        return
    sql = _binary(step.sql)
    async with driver_errors_async(conn, raw, sql), raw.cursor() as cursor:
        names = _wire_types(step.types)
        _prepare(cursor)
        async with cursor.copy(sql) as copy:
            copy.set_types(names)
            write = copy.write_row
            for record in step.records:
                await write(record)


def _binary(sql: str) -> str:
    return f"{sql} (FORMAT BINARY)"


_POSTGRESQL: Dialect = postgresql.dialect()  # type: ignore[no-untyped-call]

#: The PostgreSQL type whose binary form psycopg writes for each SQLAlchemy type the jobs
#: table's COPY columns have (by the name the dialect gives the column's type).
_WIRE = {
    "UUID": "uuid",
    "TEXT": "text",
    "VARCHAR": "text",
    "INTEGER": "int4",
    "SMALLINT": "int2",
    "BIGINT": "int8",
    "FLOAT": "float8",
    "DOUBLE PRECISION": "float8",
    "TIMESTAMP WITH TIME ZONE": "timestamptz",
    "JSONB": "jsonb",
    "NUMERIC": "numeric",
    "BOOLEAN": "bool",
}


def _wire_types(types: Sequence[TypeEngine[Any]]) -> list[str]:
    """The PostgreSQL type of each of ``types`` (a `CopyRows`' column types) that
    psycopg writes for it."""
    return _wire_names(tuple(types))


@lru_cache(maxsize=64)
def _wire_names(types: tuple[TypeEngine[Any], ...]) -> list[str]:
    out = []
    for type_ in types:
        name = type_.compile(dialect=_POSTGRESQL).split("(")[0].strip()
        wire = _WIRE.get(name)
        if wire is None:
            raise TypeError(f"COPY has no binary form for a column of type {name}")
        out.append(wire)
    return out


class _JsonTextBinaryDumper(Dumper):
    """A payload's JSON text (checked and encoded before, `jobqueue.validation`) in
    jsonb's binary form: its version, 1, then the text. psycopg's own jsonb dumper would
    encode the text again, as a JSON string."""

    format = Format.BINARY
    oid = pg_types["jsonb"].oid

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        connection = self.connection
        self._encoding = "utf-8" if connection is None else connection.info.encoding

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode(self._encoding)


class _JsonText(str):
    """Only a key: the class `_JsonTextBinaryDumper` is registered for (COPY's types pick
    dumpers by type, not by a value's class)."""


def _prepare(cursor: Cursor[Any] | AsyncCursor[Any]) -> None:
    """Make ``cursor``'s COPY write jsonb from JSON text (its adapters are its own: the
    connection's and other cursors' are left as they are)."""
    cursor.adapters.register_dumper(_JsonText, _JsonTextBinaryDumper)
