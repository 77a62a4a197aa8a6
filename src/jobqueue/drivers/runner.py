"""Runners: what runs an operation's steps (`jobqueue.sql.steps`) on one connection.

The queue hands each step to a runner (``step.run(runner)``) and gets its rows back, as
plain dicts; it never learns which driver ran it. A runner is made for a connection and
told whether that connection is the queue's own (``own``) and in autocommit mode
(``autocommit``): only on the queue's own connection does a `Direct` step take the fast
path (`jobqueue.drivers.direct`), and only where the driver has one for that mode
(`jobqueue.drivers.raw.supported`). Elsewhere (a caller's transaction, another driver) it
runs as any query does.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Result
from sqlalchemy.ext.asyncio import AsyncConnection

from ..sql.steps import CopyRows, Direct, Query, Rows
from .copy import copy_rows, copy_rows_async
from .direct import run_direct, run_direct_async
from .raw import supported


def rows_of(result: Result[Any]) -> Rows:
    """The result's rows as plain dicts: much cheaper per row than SQLAlchemy's RowMapping
    (a claim or an `enqueue_many` turns every row into a `Job`)."""
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


class SyncRunner:
    """Runs steps on a sync connection."""

    __slots__ = ("conn", "fast")

    def __init__(self, conn: Connection, *, own: bool = False, autocommit: bool = False) -> None:
        self.conn = conn
        self.fast = own and supported(conn.dialect, autocommit=autocommit)

    def query(self, step: Query) -> Rows:
        if step.params is None:
            return rows_of(self.conn.execute(step.statement))
        return rows_of(self.conn.execute(step.statement, step.params))

    def direct(self, step: Direct) -> Rows:
        if self.fast:
            return run_direct(self.conn, step)
        return rows_of(self.conn.execute(step.statement, step.params))

    def copy(self, step: CopyRows) -> Rows:
        copy_rows(self.conn, step)
        return []


class AsyncRunner:
    """Runs steps on an async connection."""

    __slots__ = ("conn", "fast")

    def __init__(
        self, conn: AsyncConnection, *, own: bool = False, autocommit: bool = False
    ) -> None:
        self.conn = conn
        self.fast = own and supported(conn.dialect, autocommit=autocommit)

    async def query(self, step: Query) -> Rows:
        if step.params is None:
            return rows_of(await self.conn.execute(step.statement))
        return rows_of(await self.conn.execute(step.statement, step.params))

    async def direct(self, step: Direct) -> Rows:
        if self.fast:
            return await run_direct_async(self.conn, step)
        return rows_of(await self.conn.execute(step.statement, step.params))

    async def copy(self, step: CopyRows) -> Rows:
        await copy_rows_async(self.conn, step)
        return []
