"""SQLite's writers: the write lock is waited for in short tries, hot statements run past
SQLAlchemy in the queue's own transactions, and on aiosqlite a transaction runs whole on
the connection's thread, so that the event loop never runs while it holds the lock
(`jobqueue.drivers.sqlite_thread`).

The fast path is checked as `tests/drivers/test_direct.py` checks it on PostgreSQL: each hot
statement runs through SQLAlchemy on one table and through the fast path on another table
holding the same rows, and both give the same rows, of the same types, and the same errors.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import MetaData, event, insert, make_url, select

from jobqueue import AsyncJobQueue, JobQueue, Status, migrate
from jobqueue.drivers import direct, engines
from jobqueue.drivers.engines import make_async_engine, make_engine
from jobqueue.drivers.errors import translate
from jobqueue.drivers.runner import rows_of
from jobqueue.drivers.sqlite_thread import run_transaction
from jobqueue.errors import DatabaseBusy, PayloadError, SchemaNotInstalled
from jobqueue.models import Completion, WorkerPresence
from jobqueue.sql.statements import Statements
from jobqueue.sql.steps import Direct, Query, Row, Rows, Step
from jobqueue.sql.table import jobs_table
from tests.support.direct import WORKER, assert_same_rows, completions, held, new_row


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
    event.listen(q.engine, "connect", lambda dbapi, _record: dbapi.set_trace_callback(tried.append))
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
    "database is locked", raised as `DatabaseBusy`."""
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
    assert isinstance(failed[0], DatabaseBusy)
    assert "database is locked" in str(failed[0])
    assert q.enqueue("image", {}).id  # the connection is fine afterwards
    q.close()


# -- transactions on the connection's thread -------------------------------------------------


async def test_hot_writes_never_hold_the_lock_while_the_event_loop_runs(
    sqlite_table: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every trip to the aiosqlite connection's thread comes back with the write lock free:
    the enqueue, claim, heartbeat and completion transactions hold it on that thread only,
    never across a turn of the event loop (where other work would keep it waiting)."""
    url, table = sqlite_table
    path = _path(url)
    after_each_trip: list[bool] = []
    trip = aiosqlite.Connection._execute

    async def observed(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await trip(self, fn, *args, **kwargs)
        finally:
            after_each_trip.append(lock_held(path))

    monkeypatch.setattr(aiosqlite.Connection, "_execute", observed)
    async with AsyncJobQueue(url, table=table) as q:
        jobs = [await q.enqueue("image", {"n": n}) for n in range(4)]
        after_each_trip.clear()  # connecting (and its pragmas) is not a transaction
        jobs.append(await q.enqueue("image", {"n": 4}))
        claimed = await q.claim("w", limit=2)
        assert await q.heartbeat_many("w", claimed) == {j.id for j in claimed}
        written, more = await q.complete_and_claim(
            [Completion(j, {"ok": True}) for j in claimed], "w", limit=5
        )
        assert written == {j.id for j in claimed} and len(more) == 3
        assert await q.complete_many([Completion(j, None) for j in more]) == {j.id for j in more}
        assert {j.status.value for j in await q.list()} == {"completed"}
    assert after_each_trip and not any(after_each_trip), after_each_trip


async def test_no_write_holds_the_lock_while_the_event_loop_runs(
    sqlite_table: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the hot writes only: a handler's progress and remote task id, a failure, a
    release, a reap, the live-workers row, a cancel and a retry hold the write lock on the
    connection's thread only too. A worker whose event loop stands still (a handler's
    blocking call) in the middle of one of them would otherwise keep every other process's
    writers, their heartbeats among them, waiting for as long as it stands still."""
    url, table = sqlite_table
    path = _path(url)
    held_after: list[str] = []
    trip = aiosqlite.Connection._execute
    doing = ["connecting"]

    async def observed(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await trip(self, fn, *args, **kwargs)
        finally:
            if lock_held(path):
                held_after.append(doing[0])

    async with AsyncJobQueue(url, table=table, retry_backoff=(0.01, 0.01)) as q:
        for n in range(4):
            await q.enqueue("image", {"n": n})
        a, b, c, d = await q.claim("w", limit=4, lease=0.05)
        me = WorkerPresence("w", ("default",), None, 4)
        monkeypatch.setattr(aiosqlite.Connection, "_execute", observed)

        async def step(name: str, write: Awaitable[Any]) -> Any:
            doing[0] = name
            return await write

        await step("set_progress", q.set_progress(a, 50, "half way"))
        await step("save_remote_task_id", q.save_remote_task_id(a, "task-1"))
        await step("fail", q.fail(a, "RuntimeError: boom"))
        await step("release", q.release(b, "worker stopping"))
        await step("worker_beat", q.worker_beat(me, ttl=30))
        await step("cancel", q.cancel(c.id))
        await step("retry", q.retry(c.id))
        await asyncio.sleep(0.1)  # d's lease expires
        assert await step("reap", q.reap()) == [(d.id, Status.PENDING)]
        await step("sweep_workers", q.sweep_workers())
        await step("worker_gone", q.worker_gone("w"))
        await step("get", q.get(a.id))
    assert held_after == [], held_after


def _statements(table: str) -> Statements:
    return Statements(jobs_table(table, None, MetaData()), "sqlite")


def _steps(*steps: Step, fail: bool = False) -> Generator[Step, Rows, list[Rows]]:
    """An operation made of ``steps``: all their rows, or an error after the last one."""
    got = []
    for step in steps:
        got.append((yield step))
    if fail:
        raise RuntimeError("the operation failed after its writes")
    return got


@pytest.fixture
async def thread_conn(sqlite_table: tuple[str, str]) -> AsyncIterator[Any]:
    url, _ = sqlite_table
    engine = make_async_engine(url)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


def _count(url: str, table: str) -> int:
    with make_engine(url).connect() as conn:
        return len(conn.execute(select(jobs_table(table, None, MetaData()).c.id)).all())


async def test_a_thread_transaction_commits_its_writes_and_rolls_back_on_error(
    sqlite_table: tuple[str, str], thread_conn: Any
) -> None:
    url, table = sqlite_table
    s = _statements(table)
    [[inserted]] = await run_transaction(thread_conn, _steps(s.insert_many([new_row()])))
    assert inserted["id"] == uuid.UUID(int=1000)
    assert _count(url, table) == 1
    second = s.insert_many([new_row(id=uuid.UUID(int=1001))])
    with pytest.raises(RuntimeError, match="after its writes"):
        await run_transaction(thread_conn, _steps(second, fail=True))
    assert _count(url, table) == 1
    # The connection is out of any transaction and takes the next one.
    await run_transaction(thread_conn, _steps(second))
    assert _count(url, table) == 2


async def test_a_thread_transaction_goes_on_through_sqlalchemy_in_the_same_transaction(
    sqlite_table: tuple[str, str], thread_conn: Any
) -> None:
    """A step the thread cannot run as SQLAlchemy would (`direct.sqlite_runs`) ends the
    thread's part: SQLAlchemy runs the rest in the transaction the thread began (it sees
    the thread's writes, and an error undoes them)."""
    url, table = sqlite_table
    s = _statements(table)
    t = jobs_table(table, None, MetaData())
    read = Query(select(t.c.id, t.c.priority).order_by(t.c.id), None)
    # An INSERT of many rows: a list of parameter sets, left to SQLAlchemy.
    many = s.insert_many([new_row(id=uuid.UUID(int=n), priority=n) for n in (1, 2)])
    assert not direct.sqlite_runs(many)
    [inserted], _, rows = await run_transaction(
        thread_conn, _steps(s.insert_many([new_row(priority=7)]), many, read)
    )
    assert inserted["id"] == uuid.UUID(int=1000)
    assert [(r["id"], r["priority"]) for r in rows] == [
        (uuid.UUID(int=1), 1),
        (uuid.UUID(int=2), 2),
        (uuid.UUID(int=1000), 7),
    ]
    with pytest.raises(RuntimeError):
        await run_transaction(
            thread_conn,
            _steps(
                s.insert_many([new_row(id=uuid.UUID(int=1001))]),
                s.insert_many([new_row(id=uuid.UUID(int=n)) for n in (3, 4)]),
                read,
                fail=True,
            ),
        )
    assert _count(url, table) == 3
    # A first step of another kind: SQLAlchemy runs it all; no step: nothing runs.
    many = s.insert_many([new_row(id=uuid.UUID(int=n)) for n in (5, 6)])
    _, rows = await run_transaction(thread_conn, _steps(many, read))
    assert len(rows) == 5
    assert await run_transaction(thread_conn, _steps()) == []


async def test_errors_in_a_thread_transaction_translate_as_sqlalchemys_do(
    sqlite_table: tuple[str, str], thread_conn: Any
) -> None:
    url, table = sqlite_table
    s = _statements(table)
    with pytest.raises(Exception) as out_of_bounds:
        await run_transaction(thread_conn, _steps(s.insert_many([new_row(priority=10**7)])))
    assert isinstance(translate(out_of_bounds.value, table=table), PayloadError)
    gone = _statements(table + "_gone").claim(WORKER, limit=1, lease=1.0, queues=None, kinds=None)
    with pytest.raises(Exception) as missing:
        await run_transaction(thread_conn, _steps(gone))
    assert isinstance(translate(missing.value, table=table), SchemaNotInstalled)
    assert _count(url, table) == 0


# -- the fast path gives what SQLAlchemy gives ------------------------------------------------

DRIVERS = ["pysqlite", "aiosqlite"]


def _fill(url: str, tables: list[str]) -> None:
    past = datetime.now(UTC) - timedelta(hours=1)
    jobs = [
        {
            "id": uuid.UUID(int=i + 1),
            "priority": i % 3,
            "owner_id": None if i % 2 else f"owner-{i}",
            "idempotency_key": None if i % 4 else f"key-{i}",
            # In the line, in an order of turns other than their ids'.
            "turn": float(i * 7 % 12),
            "payload": f'{{"n": {i}, "prompt": "ein Bär", "none": null}}',
            "run_at": past,
            "created_at": past,
        }
        for i in range(12)
    ]
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for table in tables:
                conn.execute(insert(jobs_table(table, None, MetaData())), jobs)
    finally:
        engine.dispose()


Run = Callable[[str, Query], Any]


@pytest.fixture(params=DRIVERS)
async def runs(
    request: pytest.FixtureRequest, jobqueue_sqlite_url: str, table_name: str
) -> AsyncIterator[tuple[Run, Run]]:
    """Run a statement on its table, in a transaction the queue's way: through SQLAlchemy,
    and through the fast path."""
    url = jobqueue_sqlite_url
    for table in (f"{table_name}_sa", f"{table_name}_fast"):
        migrate(url, table=table)
    _fill(url, [f"{table_name}_sa", f"{table_name}_fast"])
    if request.param == "pysqlite":
        engine = make_engine(url)

        async def through_sa(_table: str, step: Query) -> Rows:
            with engine.begin() as conn:
                return rows_of(conn.execute(step.statement, step.params))

        async def through_fast(_table: str, step: Query) -> Rows:
            with engine.begin() as conn:
                if isinstance(step, Direct):
                    return direct.run_direct(conn, step)
                raw: Any = conn.connection.driver_connection
                return direct.sqlite_rows(raw, step, conn.dialect)

        yield through_sa, through_fast
        engine.dispose()
        return
    aengine = make_async_engine(url)

    async def athrough_sa(_table: str, step: Query) -> Rows:
        async with aengine.begin() as conn:
            return rows_of(await conn.execute(step.statement, step.params))

    async def athrough_fast(_table: str, step: Query) -> Rows:
        async with aengine.connect() as conn:
            [rows] = await run_transaction(conn, _steps(step))
            return rows

    yield athrough_sa, athrough_fast
    await aengine.dispose()


async def test_the_fast_path_returns_what_sqlalchemy_returns(
    runs: tuple[Run, Run], table_name: str
) -> None:
    sa_run, fast_run = runs
    tables = {"sa": f"{table_name}_sa", "fast": f"{table_name}_fast"}
    got: dict[str, Rows] = {}

    async def both(build: Callable[[Statements], Direct]) -> Rows:
        for side, run in (("sa", sa_run), ("fast", fast_run)):
            step = build(_statements(tables[side]))
            assert isinstance(step, Direct)
            got[side] = await run(tables[side], step)
        assert_same_rows(got["sa"], got["fast"])
        return got["sa"]

    assert len(await both(lambda s: s.insert_many([new_row()]))) == 1
    at = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    await both(lambda s: s.insert_many([new_row(id=uuid.UUID(int=1001), run_at_value=at)]))

    claims: dict[str, Rows] = {}

    async def claim(limit: int) -> None:
        for side, run in (("sa", sa_run), ("fast", fast_run)):
            s = _statements(tables[side])
            step = s.claim(WORKER, limit=limit, lease=60.0, queues=("default",), kinds=None)
            claims[side] = await run(tables[side], step)
        assert_same_rows(claims["sa"], claims["fast"])

    await claim(5)
    assert len(claims["sa"]) == 5
    mine = dict(claims)
    beats: dict[str, Rows] = {}
    for side, run in (("sa", sa_run), ("fast", fast_run)):
        s = _statements(tables[side])
        beats[side] = await run(tables[side], s.heartbeat_many(WORKER, held(mine[side]), 30.0))
    assert_same_rows(beats["sa"], beats["fast"])
    assert len(beats["sa"]) == 5
    written: dict[str, Rows] = {}
    for side, run in (("sa", sa_run), ("fast", fast_run)):
        s = _statements(tables[side])
        written[side] = await run(tables[side], s.complete_many(completions(mine[side])))
    assert_same_rows(written["sa"], written["fast"])
    assert len(written["sa"]) == 5

    # Every other statement of an operation runs there too (`direct.sqlite_runs`): the
    # writes a worker and a client make besides the hot ones, and the reads.
    async def same(build: Callable[[Statements, Rows], Query]) -> Rows:
        for side, run in (("sa", sa_run), ("fast", fast_run)):
            step = build(_statements(tables[side]), claims[side])
            assert direct.sqlite_runs(step), step
            got[side] = [without_times(r) for r in await run(tables[side], step)]
        assert_same_rows(got["sa"], got["fast"])
        return got["sa"]

    def without_times(row: Row) -> Row:
        """The error history's times (the database clock's, in JSON text) left out."""
        if not isinstance(row.get("errors"), str):
            return row
        entries = [{k: v for k, v in e.items() if k != "at"} for e in json.loads(row["errors"])]
        return {**row, "errors": entries}

    await claim(5)
    one = 0

    def job(rows: Rows) -> tuple[uuid.UUID, int, datetime]:
        return held(rows)[one]

    assert len(await same(lambda s, r: s.set_progress(*job(r), 40, "Bär"))) == 1
    assert len(await same(lambda s, r: s.save_remote_task_id(*job(r), "task-1"))) == 1
    assert len(await same(lambda s, r: s.fence_state(job(r)[0]))) == 1
    assert len(await same(lambda s, r: s.fail(*job(r), "RuntimeError: boom", 0.0))) == 1
    one = 1
    assert len(await same(lambda s, r: s.fail(*job(r), "RuntimeError: boom", None))) == 1
    assert len(await same(lambda s, r: s.retry(job(r)[0]))) == 1
    one = 2
    assert len(await same(lambda s, r: s.release(*job(r), "stopping"))) == 1
    one = 3
    assert len(await same(lambda s, r: s.cancel(job(r)[0]))) == 1
    assert len(await same(lambda s, r: s.get(job(r)[0]))) == 1
    await same(lambda s, _r: s.stats(3600.0))
    for side, run in (("sa", sa_run), ("fast", fast_run)):
        s = _statements(tables[side])
        step = s.claim(WORKER, limit=2, lease=0.01, queues=("default",), kinds=None)
        claims[side] = await run(tables[side], step)
    await asyncio.sleep(0.05)
    assert len(await same(lambda s, _r: s.reap())) >= 2
