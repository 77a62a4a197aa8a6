"""PostgreSQL's COPY for `enqueue_many`: the one place that talks to a driver directly.

COPY streams rows in PostgreSQL's copy format, with no statement to parse or plan, no
array parameters to build and decode, and no RETURNING rows to send back: for a batch of
thousands of jobs it is several times faster than the best INSERT. SQLAlchemy has no COPY,
so this module reaches the driver's own connection under the SQLAlchemy connection
(psycopg 3 sync and async, asyncpg) and runs COPY there, inside whatever transaction (or
autocommit) the SQLAlchemy connection is in. Nothing else in jobqueue knows the drivers.

Behind a transaction-mode pooler (PgBouncer) COPY works as any other statement does: it
is one statement, or part of the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection


@dataclass(frozen=True, slots=True)
class CopyRows:
    """A step of an operation: COPY ``records`` (tuples in ``columns`` order) into a table.

    It stands where a SQLAlchemy statement would, and counts as a write (``is_dml``).
    ``records`` may be lazy: it is read once, while the rows are sent.
    """

    schema: str | None
    table: str
    columns: tuple[str, ...]
    records: Iterable[tuple[Any, ...]]

    is_dml = True

    @property
    def sql(self) -> str:
        name = f'"{self.schema}"."{self.table}"' if self.schema else f'"{self.table}"'
        return f"COPY {name} ({', '.join(self.columns)}) FROM STDIN"


def copy_rows(conn: Connection, step: CopyRows) -> None:
    """Run ``step`` on a sync SQLAlchemy connection (psycopg 3)."""
    raw: Any = conn.connection.driver_connection
    try:
        with raw.cursor() as cursor, cursor.copy(step.sql) as copy:
            write = copy.write_row
            for record in step.records:
                write(record)
    except Exception as exc:
        wrapped = _as_dbapi_error(step, exc, raw)
        if wrapped is exc:
            raise
        raise wrapped from exc


async def copy_rows_async(conn: AsyncConnection, step: CopyRows) -> None:
    """Run ``step`` on an async SQLAlchemy connection (psycopg 3 or asyncpg)."""
    raw: Any = (await conn.get_raw_connection()).driver_connection
    try:
        if hasattr(raw, "copy_records_to_table"):  # asyncpg
            # asyncpg needs a sized sequence of records; it sends them in binary format.
            records = step.records if isinstance(step.records, Sequence) else list(step.records)
            await raw.copy_records_to_table(
                step.table, records=records, columns=list(step.columns), schema_name=step.schema
            )
            return
        async with raw.cursor() as cursor, cursor.copy(step.sql) as copy:
            write = copy.write_row
            for record in step.records:
                await write(record)
    except Exception as exc:
        wrapped = _as_dbapi_error(step, exc, raw)
        if wrapped is exc:
            raise
        raise wrapped from exc


def _as_dbapi_error(step: CopyRows, exc: Exception, raw: Any) -> Exception:
    """A driver error as SQLAlchemy would have raised it for a statement, so our error
    translation (permission denied, missing table, lost connection) applies to COPY too.
    Our own errors (raised while the records were made) pass through unchanged."""
    module = type(exc).__module__.split(".")[0]
    if module not in ("psycopg", "asyncpg"):
        return exc
    lost = bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))
    if hasattr(raw, "is_closed"):  # asyncpg
        lost = lost or bool(raw.is_closed())
    wrapped = sa_exc.DBAPIError.instance(
        step.sql, None, exc, Exception, hide_parameters=True, connection_invalidated=lost
    )
    return wrapped if isinstance(wrapped, Exception) else exc
