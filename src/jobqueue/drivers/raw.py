"""The driver connection under a SQLAlchemy connection, for the steps SQLAlchemy does not
run itself (`jobqueue.drivers.direct`, `jobqueue.drivers.copy`,
`jobqueue.drivers.sqlite_thread`), and their errors raised as SQLAlchemy raises a
statement's, so that one translation (`jobqueue.drivers.errors`) covers both and a lost
connection is never handed out again.

The drivers are psycopg 3 (sync and async) and asyncpg (`SUPPORTED`), and for hot
statements in the queue's own transactions also sqlite3 and aiosqlite (`SQLITE`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NoReturn

import aiosqlite
from sqlalchemy import Connection, Dialect
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from .errors import session_refuses_writes

#: The drivers (SQLAlchemy's names for them) whose connections the fast path and COPY use.
SUPPORTED = frozenset({"psycopg", "psycopg_async", "asyncpg"})
#: SQLite's drivers, whose connections the fast path uses in the queue's own transactions.
SQLITE = frozenset({"pysqlite", "aiosqlite"})


def supported(dialect: Dialect, *, autocommit: bool = True) -> bool:
    """Whether a hot statement may run on the driver connection of a connection of the
    queue's own, in autocommit mode or (``autocommit=False``) in a transaction the queue
    began.

    On PostgreSQL only in autocommit mode, where there is no transaction for SQLAlchemy
    (or the asyncpg adapter, which begins its transactions lazily) to keep track of. The
    queue's SQLite transactions begin at once with a statement of their own (``BEGIN
    IMMEDIATE``, see `jobqueue.drivers.engines`), and a statement sent past SQLAlchemy then
    runs in them.
    """
    if dialect.name == "sqlite":
        return dialect.driver in SQLITE
    return autocommit and dialect.name == "postgresql" and dialect.driver in SUPPORTED


def driver_connection(conn: Connection) -> Any:
    """The driver connection under a sync connection."""
    return conn.connection.driver_connection


async def driver_connection_async(conn: AsyncConnection) -> Any:
    """The driver connection under an async connection: read from its sync twin when it is
    in use (always, here) instead of `AsyncConnection.get_raw_connection`, which costs a
    greenlet switch."""
    if conn.sync_connection is not None and not conn.sync_connection.closed:
        return conn.sync_connection.connection.driver_connection
    return (await conn.get_raw_connection()).driver_connection


def lost(raw: Any) -> bool:
    """Whether the driver connection is gone (closed, or broken mid-statement)."""
    if isinstance(raw, sqlite3.Connection):
        return False  # a file, not a network: its errors are the statement's
    if isinstance(raw, aiosqlite.Connection):
        return not raw._running  # its thread has stopped: closed
    if hasattr(raw, "is_closed"):  # asyncpg
        return bool(raw.is_closed())
    return bool(raw.closed or raw.broken)


@contextmanager
def driver_errors(conn: Connection, raw: Any, sql: str) -> Iterator[None]:
    """Driver errors of a statement run on ``raw`` as SQLAlchemy would raise them, and a
    lost connection invalidated (as SQLAlchemy does: the pool must not hand it out again),
    as is one whose session refuses writes (`session_refuses_writes`)."""
    try:
        yield
    except Exception as exc:
        if lost(raw) or session_refuses_writes(exc):
            conn.invalidate()
        _reraise(sql, exc, raw)


@asynccontextmanager
async def driver_errors_async(conn: AsyncConnection, raw: Any, sql: str) -> AsyncIterator[None]:
    """`driver_errors` for an async connection."""
    try:
        yield
    except Exception as exc:
        if lost(raw) or session_refuses_writes(exc):
            await conn.invalidate()
        _reraise(sql, exc, raw)


def _reraise(sql: str, exc: Exception, raw: Any) -> NoReturn:
    wrapped = _as_dbapi_error(sql, exc, raw)
    if wrapped is exc:
        raise exc
    raise wrapped from exc


def _as_dbapi_error(sql: str, exc: Exception, raw: Any) -> Exception:
    """A driver error as SQLAlchemy would have raised it for a statement. Our own errors
    (raised while COPY's records were made) pass through unchanged."""
    module = type(exc).__module__.split(".")[0]
    if module not in ("psycopg", "asyncpg", "sqlite3"):
        return exc
    wrapped = sa_exc.DBAPIError.instance(
        sql, None, exc, Exception, hide_parameters=True, connection_invalidated=lost(raw)
    )
    return wrapped if isinstance(wrapped, Exception) else exc
