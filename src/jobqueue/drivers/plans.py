"""The plans PostgreSQL runs the worker's hot statements with: made once, not per execution.

psycopg prepares a statement on the server once it has run a few times on a connection;
PostgreSQL then plans each execution for its parameter values (a custom plan) until a plan
made for any values (the generic plan) looks no dearer, and keeps that one. For the
worker's claim and completion statements it never does: their ``LIMIT`` is a parameter,
which a generic plan must guess, so its estimate stays above every custom plan's, and each
execution is planned again, which costs the server about as much as running the statement.
A `Direct` step marked ``generic`` is one whose generic plan reads the same indexes as its
custom plans (``tests/sql/test_explain.py`` checks each); it runs in a session set to use
generic plans (``plan_cache_mode``), and every other statement in one that is not.

The setting is a session's, so it is switched only on connections of engines this package
made (`allow`), whose pool sets it back when a connection is returned; only on a
connection one task keeps from one statement to the next (`keep`: a worker's claim loop
and its completion writers), so that the switch is made once per hold and setting it back
is never part of returning a connection that an ordinary call, which may be cancelled at
any point, took from the pool; and only where psycopg prepares statements (behind a
transaction-mode pooler, ``prepare_threshold=none``, nothing is prepared and a generic plan
would be made for every execution). asyncpg keeps PostgreSQL's own choice.
"""

from __future__ import annotations

from typing import Any
from weakref import WeakSet

from sqlalchemy import Engine, event
from sqlalchemy.pool import Pool

GENERIC = b"SET plan_cache_mode = force_generic_plan"
RESET = b"RESET plan_cache_mode"

#: The pools that set the mode back on return (`allow`): an engine's, shared by the
#: engines made from it with other execution options (the queue's autocommit engine).
_allowed: WeakSet[Pool] = WeakSet()
#: psycopg connections whose session uses generic plans now.
_generic: WeakSet[Any] = WeakSet()
#: SQLAlchemy connections (a checkout each) a task keeps between statements (`keep`).
_kept: WeakSet[Any] = WeakSet()


def keep(conn: Any) -> None:
    """Let the generic plans be used on ``conn``, a checkout of a pooled connection that
    one task keeps between statements (it ends when ``conn`` is closed)."""
    _kept.add(conn)


def allow(sync_engine: Engine) -> None:
    """Let the generic plans be used on ``sync_engine``'s connections: a connection
    given back to its pool in that mode is set back first (or dropped, if that fails)."""
    _allowed.add(sync_engine.pool)

    @event.listens_for(sync_engine, "reset")
    def _on_reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        raw = record.driver_connection
        if raw not in _generic:
            return
        _generic.discard(raw)
        if state.terminate_only or not state.asyncio_safe:
            return  # the connection is being closed, not kept
        # An error here makes the pool drop the connection instead of keeping a session
        # whose mode is wrong for anyone else. Outside autocommit mode the setting must be
        # committed: the pool's rollback, which comes next, would undo it.
        autocommit = dbapi_connection.autocommit
        if not autocommit:
            dbapi_connection.rollback()
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(RESET.decode())
        finally:
            cursor.close()
        if not autocommit:
            dbapi_connection.commit()


def switch_to(conn: Any, raw: Any, sync_engine: Engine, generic: bool) -> bytes | None:
    """The statement that puts ``raw`` (the psycopg connection under ``conn``, of
    ``sync_engine``) in the mode ``generic`` asks for, or None if it is in it already or may
    not be switched; the caller runs it and then calls `switched`.

    A connection counts as switched to generic plans from the moment the statement is
    handed out: one cut short (a cancellation, a lost connection) may have reached the
    server, and setting a connection back that was not switched costs nothing."""
    if (raw in _generic) == generic:
        return None
    if generic:
        if (
            conn not in _kept
            or sync_engine.pool not in _allowed
            or raw.prepare_threshold is None
        ):
            return None
        _generic.add(raw)
        return GENERIC
    return RESET


def switched(raw: Any, generic: bool) -> None:
    """Record that ``raw``'s session now runs in the mode ``generic`` asks for."""
    if generic:
        _generic.add(raw)
    else:
        _generic.discard(raw)


__all__ = ["GENERIC", "RESET", "allow", "keep", "switch_to", "switched"]
