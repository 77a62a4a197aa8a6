"""SQLite's writers: the write lock is waited for in short tries."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import event, make_url
from sqlalchemy.exc import OperationalError

from jobqueue import JobQueue, migrate
from jobqueue.drivers import engines


@pytest.fixture
def sqlite_table(jobqueue_sqlite_url: str, table_name: str) -> tuple[str, str]:
    migrate(jobqueue_sqlite_url, table=table_name)
    return jobqueue_sqlite_url, table_name


def _path(url: str) -> str:
    return make_url(url).database or ""


def lock_held(path: str) -> bool:
    """Whether some connection holds the database's write lock right now (a probe that
    takes it, without waiting, and gives it back at once)."""
    probe = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        assert exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
        return True
    else:
        probe.execute("ROLLBACK")
        return False
    finally:
        probe.close()


@contextmanager
def holding_the_lock(path: str) -> Iterator[None]:
    """Hold the write lock from another connection for the block."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- waiting for the lock -------------------------------------------------------------------


def test_a_writer_waiting_for_the_lock_keeps_trying_in_short_tries(
    sqlite_table: tuple[str, str],
) -> None:
    """SQLite's own busy handler sleeps longer and longer between its looks at the lock;
    ``BEGIN IMMEDIATE`` gives it short tries instead, again and again while it waits."""
    url, table = sqlite_table
    q = JobQueue(url, table=table)
    tried: list[str] = []
    event.listen(
        q.engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(tried.append)
    )
    done: list[object] = []
    with holding_the_lock(_path(url)):
        writer = threading.Thread(target=lambda: done.append(q.enqueue("image", {})))
        writer.start()
        # The writer waits for as long as the lock is held: for a second here.
        writer.join(1.0)
        assert writer.is_alive() and not done
    writer.join(60)
    assert len(done) == 1
    q.close()
    assert tried.count("BEGIN IMMEDIATE") >= 10, tried.count("BEGIN IMMEDIATE")


def test_a_writer_gives_up_after_the_busy_timeout(
    sqlite_table: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The short tries end when `SQLITE_BUSY_TIMEOUT_MS` have passed, with SQLite's own
    "database is locked"."""
    monkeypatch.setattr(engines, "SQLITE_BUSY_TIMEOUT_MS", 300)
    url, table = sqlite_table
    q = JobQueue(url, table=table)
    failed: list[BaseException] = []

    def write() -> None:
        try:
            q.enqueue("image", {})
        except BaseException as exc:
            failed.append(exc)

    with holding_the_lock(_path(url)):
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(30)  # a writer that never gives up fails here, not by hanging
        assert not writer.is_alive()
    assert len(failed) == 1
    assert isinstance(failed[0], OperationalError)
    assert "database is locked" in str(failed[0])
    assert q.enqueue("image", {}).id  # the connection is fine afterwards
    q.close()
