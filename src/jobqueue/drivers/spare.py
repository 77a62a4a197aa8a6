"""The sync queue's spare connection: the one its last autocommit operation ran on, kept
for the next one while calls follow each other.

A connection taken from SQLAlchemy's pool and given back for every operation costs the
client more than a one-job statement does (the checkout and the return, with the switch
into autocommit mode and back, and the pool's reset). An application that enqueues in a
loop therefore runs its operations on one kept connection, and a thread of this module
gives it back to the pool once no operation has used it for `IDLE` seconds, so that an
application at rest holds no connection out of the pool for longer than that. One
operation at a time takes it (any thread); concurrent ones take connections from the pool
as before. The async queue keeps its spare until the event loop next turns instead
(`jobqueue.queue.AsyncJobQueue`), which needs no thread.
"""

from __future__ import annotations

import os
import threading
import time

from sqlalchemy import Connection, Engine

#: Seconds a spare connection stays out of the pool with no operation on it.
IDLE = 0.05


class SpareConnection:
    """At most one idle connection of one engine, given back after `IDLE` seconds unused."""

    __slots__ = ("_cond", "_conn", "_engine", "_pid", "_thread", "_used")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._conn: Connection | None = None
        self._engine: Engine | None = None
        self._used = 0.0
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None

    def take(self, engine: Engine) -> Connection:
        """The kept connection if it is ``engine``'s, else a new one from its pool."""
        with self._cond:
            conn, self._conn = self._conn, None
            if self._pid != os.getpid():
                # A forked child: the connection is the parent's (its socket shared), and
                # the thread that would give it back did not survive the fork.
                self._pid, self._thread, conn = os.getpid(), None, None
        if conn is None:
            return engine.connect()
        if self._engine is not engine:
            conn.close()
            return engine.connect()
        return conn

    def keep(self, conn: Connection, engine: Engine) -> None:
        """Keep ``conn`` (idle, in autocommit mode, after an operation that succeeded) for
        the next operation, or give it back to the pool when one is kept already."""
        with self._cond:
            if self._conn is None and self._pid == os.getpid():
                self._conn, self._engine, self._used = conn, engine, time.monotonic()
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._give_back_when_idle, name="jobqueue-spare", daemon=True
                    )
                    self._thread.start()
                return
        conn.close()

    def let_go(self) -> None:
        """Give the kept connection back to the pool now (`JobQueue.close`)."""
        with self._cond:
            conn, self._conn = self._conn, None
            self._cond.notify()
        if conn is not None:
            conn.close()

    def _give_back_when_idle(self) -> None:
        while True:
            with self._cond:
                conn = self._conn
                if conn is None:
                    self._thread = None
                    return
                wait = self._used + IDLE - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._conn = None
            conn.close()


__all__ = ["IDLE", "SpareConnection"]
