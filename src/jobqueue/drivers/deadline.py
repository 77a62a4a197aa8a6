"""Deadlines on a connection: an operation that gets no answer in time fails, it never hangs.

A network that fails silently (a partition, a load balancer or a NAT table that drops a
flow, a proxy that stopped forwarding) leaves a connection open with nothing coming back.
TCP keepalives and ``tcp_user_timeout`` notice that only where the silence is on the
connection's own path; a middlebox that still acknowledges every byte hides it from them.
So the queue bounds each of its operations by the client's own clock as well: when the
deadline passes, the connection's socket is shut down under the driver, which then fails
the statement it waits on as a lost connection (SQLAlchemy discards the connection), and
the queue raises `jobqueue.errors.DatabaseTimeout`.

Shutting the socket down, rather than cancelling the await, is what makes the bound hold:
psycopg answers a cancelled statement by sending the server a cancel request and waiting
for the statement to end, which through a silent network takes a dozen seconds more, and
a sync statement has no cancellation at all. A shut-down socket ends every wait at once,
for both drivers, sync or async.

`Deadline.arm` works on the connection's DBAPI object; a SQLite connection (a file, no
network) is left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection


def _shut_fd(fd: int) -> None:
    """Shut the socket ``fd`` down in both directions without closing ``fd``."""
    with contextlib.suppress(OSError, ValueError):
        sock = socket.socket(fileno=fd)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()


def _breaker(driver_connection: Any) -> Any:
    """What ends a driver connection's waits at once: ``(kind, handle)`` or None.

    psycopg (sync and async) keeps its socket in ``pgconn.socket``; asyncpg has
    ``terminate()``, which aborts its transport. SQLite has nothing to break."""
    pgconn = getattr(driver_connection, "pgconn", None)
    if pgconn is not None:
        return ("pgconn", pgconn)
    if hasattr(driver_connection, "terminate") and hasattr(driver_connection, "_transport"):
        return ("terminate", driver_connection)
    return None


class Timer:
    """One armed deadline; `fired` tells afterwards whether it broke the connection."""

    __slots__ = ("fired", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False


class _Watchdog:
    """One thread for the deadlines of sync connections (a thread per operation would cost
    more than the operation): a heap of deadlines, each fired under a lock that its
    disarming takes too, so a deadline never fires after its operation ended."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int, list[Any]]] = []
        self._count = itertools.count()
        self._thread: threading.Thread | None = None
        #: Disarmed entries still in the heap (about: the thread pops some as they fall due).
        self._stale = 0

    def arm(self, seconds: float, fd: int, timer: Timer) -> list[Any]:
        # Our own descriptor of the socket: shutting it down reaches the connection's
        # socket, and it cannot be another socket's by then even if the driver closed and
        # the system reused its descriptor meanwhile.
        entry: list[Any] = [os.dup(fd), timer]
        item = (time.monotonic() + seconds, next(self._count), entry)
        with self._lock:
            heapq.heappush(self._heap, item)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="jobqueue-deadlines", daemon=True
                )
                self._thread.start()
            elif self._heap[0] is item:
                # Only a deadline earlier than every other one changes when the thread
                # must wake; the rest wait their turn (and most are disarmed by then).
                self._lock.notify()
        return entry

    def disarm(self, entry: list[Any]) -> None:
        with self._lock:
            fd = entry[0]
            entry[0] = None
            self._stale += 1
            if self._stale > 1024 and self._stale * 2 > len(self._heap):
                # Disarmed deadlines wait in the heap until they are due: drop them in one
                # pass once they are most of it, so a busy client's heap stays small.
                self._heap = [item for item in self._heap if item[2][0] is not None]
                heapq.heapify(self._heap)
                self._stale = 0
        if fd is not None:
            os.close(fd)

    def _run(self) -> None:
        with self._lock:
            while True:
                while self._heap and self._heap[0][2][0] is None:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._lock.wait(60.0)
                    if not self._heap:
                        self._thread = None
                        return
                    continue
                due, _, entry = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                fd = entry[0]
                entry[0] = None
                entry[1].fired = True
                _shut_fd(fd)
                os.close(fd)


_WATCHDOG = _Watchdog()


@contextlib.contextmanager
def sync_deadline(conn: Connection, seconds: float | None) -> Iterator[Timer | None]:
    """Within the block, ``conn``'s socket is shut down once ``seconds`` pass (None: no
    deadline); the `Timer` says afterwards whether it was."""
    if seconds is None:
        yield None
        return
    breaker = _breaker(conn.connection.driver_connection)
    fd = _socket_of(breaker)
    if fd is None:
        yield None
        return
    timer = Timer(seconds)
    entry = _WATCHDOG.arm(seconds, fd, timer)
    try:
        yield timer
    finally:
        _WATCHDOG.disarm(entry)


def _socket_of(breaker: Any) -> int | None:
    """The socket of a psycopg connection (`_breaker`), None when it has none (closed)."""
    if breaker is None or breaker[0] != "pgconn":
        return None
    try:
        fd: int = breaker[1].socket
    except Exception:
        return None
    return fd


@contextlib.contextmanager
def async_deadline(conn: AsyncConnection, seconds: float | None) -> Iterator[Timer | None]:
    """`sync_deadline` for an async connection (started), timed on the event loop."""
    if seconds is None:
        yield None
        return
    fairy = conn.sync_connection.connection if conn.sync_connection is not None else None
    breaker = None if fairy is None else _breaker(fairy.driver_connection)
    with arm_on_loop(breaker, seconds) as timer:
        yield timer


@contextlib.contextmanager
def arm_on_loop(breaker: Any, seconds: float) -> Iterator[Timer | None]:
    """The deadline of an async driver connection (`_breaker`), as a call on the running
    loop: the connection is only ever used on that loop, so cancelling the call at the
    end of the block is exact."""
    if breaker is None:
        yield None
        return
    timer = Timer(seconds)
    kind, handle = breaker

    def fire() -> None:
        timer.fired = True
        if kind == "terminate":
            handle.terminate()
            return
        # Read now, on the loop that uses the connection: a connection closed meanwhile
        # has no socket, and its old descriptor may be another socket's by now.
        fd = _socket_of(breaker)
        if fd is not None:
            _shut_fd(fd)

    call = asyncio.get_running_loop().call_later(seconds, fire)
    try:
        yield timer
    finally:
        call.cancel()


def breaker_of(driver_connection: Any) -> Any:
    """`_breaker` for code that holds a driver connection itself (the listener)."""
    return _breaker(driver_connection)


__all__ = ["Timer", "arm_on_loop", "async_deadline", "breaker_of", "sync_deadline"]
