"""SQLite transactions that hold the write lock on the connection's own thread only.

SQLite lets one connection write at a time, in every process that opens the file: a
transaction that may write takes the write lock at its ``BEGIN IMMEDIATE`` and keeps it
until its ``COMMIT``, and every other writer waits for it. aiosqlite runs each call on a
thread of the connection's own and hands the result back to the event loop. A transaction
that SQLAlchemy runs statement by statement (the BEGIN; for each statement a cursor, its
execution, its rows and the cursor's closing; the COMMIT) therefore holds the lock across
up to a dozen such hand-offs, each of which waits for its turn in the event loop: in a
busy worker (its handlers, its completer, its claim loop) the lock is held far longer
than SQLite works.

`run_transaction` runs the operation's steps (its hot ones, `Direct`: one job's INSERT, a
claim, a completion batch, heartbeats; and every other query with one parameter set: a
handler's progress, a failure, a release, a reap, the live-workers row, a cancel) and the
operation's own code between them on the connection's thread instead: BEGIN, the
statements and COMMIT in one hand-off, the lock held only while that thread works. An
event loop that stands still (a handler's blocking call, a long GC pause) therefore keeps
no other process's writer waiting: a worker stalled past the lease in the middle of a
handler's progress report would otherwise hold every other worker's heartbeats back
until their leases expired too. Only a step `jobqueue.drivers.direct.sqlite_runs` refuses
(an INSERT of many rows, a COPY) ends the thread's part: the transaction stays open and
SQLAlchemy runs the rest of the operation in it, on the same connection, as it runs any
transaction (the begin event adopts it, see `jobqueue.drivers.engines.BEGUN`).

The operation's code is sans-IO (a generator that touches nothing but its own state): it
runs on the connection's thread for the thread's part, then on the event loop, never on
both at once. An operation cancelled while its thread part runs is finished by the thread
all the same, as a statement already sent to a server is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Dialect
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from ..sql.steps import Query, Rows, Step
from .direct import sent, sqlite_rows, sqlite_runs
from .engines import BEGUN, READ_ONLY, begin_immediate
from .raw import driver_connection_async, lost
from .runner import AsyncRunner

T = TypeVar("T")


def runs_on_thread(dialect: Dialect) -> bool:
    """Whether `run_transaction` can run transactions on this dialect's connections
    (aiosqlite's)."""
    return dialect.name == "sqlite" and dialect.driver == "aiosqlite"


@dataclass(slots=True)
class _Part(Generic[T]):
    """What the thread did: the operation's value (``done``, committed), or the step it
    left to SQLAlchemy, with the transaction open."""

    done: bool
    value: T | None = None
    step: Step | None = None


async def run_transaction(conn: AsyncConnection, steps: Generator[Step, Rows, T]) -> T:
    """Run an operation's ``steps`` in one transaction on ``conn``, a connection of the
    queue's own with no transaction yet: on the connection's thread as far as
    `jobqueue.drivers.direct.sqlite_runs` them, the rest through SQLAlchemy (see the
    module's docstring). A transaction begins deferred when ``conn`` is marked
    `READ_ONLY`, else with ``BEGIN IMMEDIATE``."""
    try:
        step = next(steps)
    except StopIteration as finished:  # nothing to run
        value: T = finished.value
        return value
    begun = False
    if sqlite_runs(step):
        raw: Any = await driver_connection_async(conn)
        if lost(raw) or raw._connection is None:
            await conn.invalidate()
            raise _wrapped("BEGIN", sqlite3.OperationalError("no active connection"))
        sync = conn.sync_connection
        read_only = sync is not None and bool(sync.get_execution_options().get(READ_ONLY))
        # aiosqlite's way to run a function on the connection's thread.
        part: _Part[T] = await raw._execute(
            _on_thread, raw._conn, step, steps, conn.dialect, read_only
        )
        if part.done:
            return cast(T, part.value)
        assert part.step is not None
        step, begun = part.step, True
    info = (await conn.get_raw_connection()).info
    if begun:
        info[BEGUN] = True
    try:
        async with conn.begin():
            runner = AsyncRunner(conn, own=True)
            try:
                while True:
                    step = steps.send(await step.run(runner))
            except StopIteration as finished:
                value = finished.value
                return value
    finally:
        info.pop(BEGUN, None)


def _on_thread(
    raw: sqlite3.Connection,
    step: Query,
    steps: Generator[Step, Rows, T],
    dialect: Dialect,
    read_only: bool,
) -> _Part[T]:
    """The thread's part of `run_transaction`, from its first step (one that
    `sqlite_runs`)."""
    doing: str | Query = "BEGIN" if read_only else "BEGIN IMMEDIATE"
    try:
        if read_only:
            raw.execute("BEGIN")
        else:
            begin_immediate(raw)
        next_step: Step = step
        try:
            while sqlite_runs(next_step):
                doing = next_step
                next_step = steps.send(sqlite_rows(raw, next_step, dialect))
        except StopIteration as finished:
            doing = "COMMIT"
            raw.execute("COMMIT")
            return _Part(True, finished.value)
        return _Part(False, step=next_step)
    except BaseException as exc:
        if raw.in_transaction:
            raw.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            sql = doing if isinstance(doing, str) else sent(doing, dialect)[0]
            raise _wrapped(sql, exc) from exc
        raise


def _wrapped(sql: str, exc: sqlite3.Error) -> Exception:
    """``exc`` as SQLAlchemy raises a statement's error (`jobqueue.drivers.errors` sorts
    those)."""
    wrapped = sa_exc.DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True)
    return wrapped if isinstance(wrapped, Exception) else exc


__all__ = ["run_transaction", "runs_on_thread"]
