"""COPY: the fastest way to write many new jobs (`enqueue_many` on PostgreSQL).

COPY streams rows in PostgreSQL's copy format, with no statement to parse or plan, no
array parameters to build and decode, and no RETURNING rows to send back: for a batch of
thousands of jobs it beats the best INSERT (docs/performance.md). SQLAlchemy has no COPY,
so a `CopyRows` step runs on the driver's own connection under the SQLAlchemy connection
(psycopg 3 sync and async, asyncpg), inside whatever transaction (or autocommit) the
SQLAlchemy connection is in.

Behind a transaction-mode pooler (PgBouncer) COPY works as any other statement does: it
is one statement, or part of the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator, TypeEngine

from ..sql.steps import CopyRows
from .raw import driver_connection, driver_connection_async, driver_errors, driver_errors_async


def copy_rows(conn: Connection, step: CopyRows) -> None:
    """Run ``step`` on a sync SQLAlchemy connection (psycopg 3)."""
    raw: Any = driver_connection(conn)
    with (
        driver_errors(conn, raw, step.sql),
        raw.cursor() as cursor,
        cursor.copy(step.sql) as copy,
    ):
        write = copy.write_row
        for record in _as_text(step):
            write(record)


async def copy_rows_async(conn: AsyncConnection, step: CopyRows) -> None:
    """Run ``step`` on an async SQLAlchemy connection (psycopg 3 or asyncpg)."""
    raw: Any = await driver_connection_async(conn)
    async with driver_errors_async(conn, raw, step.sql):
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


def _as_text(step: CopyRows) -> Iterator[Sequence[Any]]:
    """``step``'s records with uuids and times as text, for psycopg's text COPY.

    psycopg formats a ``str`` faster than a ``UUID`` or a ``datetime`` (docs/performance.md
    has what that saves), and a batch shares one clock reading, so each distinct time is
    formatted once.
    """
    kinds = [_python_type(t) for t in step.types]
    uuids = [i for i, kind in enumerate(kinds) if kind is uuid.UUID]
    times = [i for i, kind in enumerate(kinds) if kind is datetime]
    formatted: dict[datetime, str] = {}
    last: datetime | None = None  # the time formatted last, and its text: most often the
    last_text = ""  # next one too (a batch's times are one object), found without a hash
    for record in step.records:
        values = list(record)
        for i in uuids:
            if values[i] is not None:
                values[i] = str(values[i])
        for i in times:
            moment = values[i]
            if moment is None:
                continue
            if moment is not last:
                text = formatted.get(moment)
                if text is None:
                    text = formatted[moment] = moment.isoformat()
                last, last_text = moment, text
            values[i] = last_text
        yield values


def _python_type(type_: TypeEngine[Any]) -> Any:
    if isinstance(type_, TypeDecorator):
        type_ = type_.impl_instance
    try:
        return type_.python_type
    except NotImplementedError:
        return None
