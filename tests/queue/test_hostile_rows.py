"""Rows that reach the table without passing through jobqueue (a Supabase client, psql, a
script) and hold what jobqueue itself would never write: JSON the decoder refuses, times
outside what Python can hold, text that is not a time. One such row must never cost
another job anything, and every read must survive it.

Rows are inserted with plain SQL, as such a client would, on SQLite and PostgreSQL and
through every driver a claim's rows come back through (psycopg sync and async, asyncpg,
sqlite3, aiosqlite), on the queue's own fast path and through plain SQLAlchemy execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import re
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

from jobqueue import AsyncJobQueue, Job, JobQueue, Status, migrate
from jobqueue.models import MAX_TURN
from jobqueue.operations import COPY_MIN_JOBS, Completion
from jobqueue.queue import _drive, _drive_async
from jobqueue.sql.table import bounds, jobs_table
from jobqueue.worker import Worker, WorkerContext
from tests.cli.helpers import JOBQUEUE, Result, clean_env, run_in_process
from tests.conftest import Either, sql_runner

#: The queue's payload limit in these tests: small, so "far beyond it" stays small too.
LIMIT = 1000

END = datetime.max.replace(tzinfo=UTC)
START = datetime.min.replace(tzinfo=UTC)

DRIVERS = [
    "sqlite",
    "aiosqlite",
    pytest.param("psycopg", marks=pytest.mark.postgres),
    pytest.param("psycopg_async", marks=pytest.mark.postgres),
    pytest.param("asyncpg", marks=pytest.mark.postgres),
]


class Db:
    """A queue on one driver, and a way to write rows behind its back."""

    def __init__(self, driver: str, url: str, table: str, q: Either) -> None:
        self.driver = driver
        self.url = url
        self.table = table
        self.q = q
        self.pg = url.startswith("postgresql")
        self._unchecked = False

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with sql_runner(self.url) as run:
            return run(statement, **params)

    def insert(self, payload_sql: str, **columns: str) -> str:
        """Insert one row as another client would; ``payload_sql`` and ``columns`` are SQL
        expressions. Returns the new id."""
        names = ["payload", *columns]
        values = [payload_sql, *columns.values()]
        if not self.pg and "id" not in columns:  # SQLite has no default for the id's hex form
            names.append("id")
            values.append("lower(hex(randomblob(16)))")
        sql = (
            f"INSERT INTO {self.table} ({', '.join(names)}) VALUES ({', '.join(values)}) "
            "RETURNING id"
        )
        if self._unchecked:
            path = make_url(self.url).database
            assert path is not None
            with contextlib.closing(sqlite3.connect(path)) as conn:
                conn.execute("PRAGMA ignore_check_constraints = ON")
                rows = conn.execute(sql).fetchall()
                conn.commit()
        else:
            rows = self.sql(sql)
        return str(rows[0][0]).replace("-", "")

    def ignore_bounds(self) -> None:
        """Let later `insert`s break the table's bounds while the table stays at the latest
        revision, as rows from before the bounds do (they are kept, see migration 0003).
        PostgreSQL drops the constraints; SQLite ignores them on the inserting connection."""
        if self.pg:
            self.without_bounds()
        else:
            self._unchecked = True

    def without_bounds(self) -> None:
        """Take the table's bounds (check constraints, migration 0003) away, so that it may
        hold what a table held before them: reading must survive such rows all the same.
        PostgreSQL drops the constraints. SQLite cannot drop one, and going back to 0002
        would lose the columns this version reads (0005): each bound is made to hold
        always instead (its expression OR-ed with true, in the stored schema)."""
        names = list(bounds(jobs_table(self.table)))
        if self.pg:
            with sql_runner(self.url) as run:
                for name in names:
                    run(f"ALTER TABLE {self.table} DROP CONSTRAINT {self.table}_{name}_check")
            return
        path = make_url(self.url).database
        assert path is not None
        with contextlib.closing(sqlite3.connect(path)) as conn:
            (version,) = conn.execute("PRAGMA schema_version").fetchone()
            query = "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?"
            (sql,) = conn.execute(query, (self.table,)).fetchone()
            for name in names:
                sql, found = re.subn(
                    rf'(CONSTRAINT "?{self.table}_{name}_check"? CHECK \()', r"\g<1>1 OR ", sql
                )
                assert found == 1, name
            conn.execute("PRAGMA writable_schema = ON")
            conn.execute(
                "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                (sql, self.table),
            )
            # Other connections (the queue's) read the schema anew.
            conn.execute(f"PRAGMA schema_version = {version + 1}")
            conn.commit()

    def json(self, text: str) -> str:
        """A SQL literal of JSON text, stored as the payload column's type."""
        literal = "'" + text.replace("'", "''") + "'"
        return f"CAST({literal} AS jsonb)" if self.pg else literal


def _queue_url(driver: str, url: str) -> str:
    if driver == "asyncpg":
        return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(False)
    return url


@pytest.fixture(params=DRIVERS)
async def db(
    request: pytest.FixtureRequest, jobqueue_sqlite_url: str, table_name: str
) -> AsyncIterator[Db]:
    driver = request.param
    if driver in ("sqlite", "aiosqlite"):
        url = jobqueue_sqlite_url
    else:
        url = request.getfixturevalue("jobqueue_postgres_url")
    migrate(url, table=table_name)
    options: dict[str, Any] = {"table": table_name, "max_payload_bytes": LIMIT}
    target: JobQueue | AsyncJobQueue = (
        JobQueue(url, **options)
        if driver in ("sqlite", "psycopg")
        else AsyncJobQueue(_queue_url(driver, url), **options)
    )
    yield Db(driver, url, table_name, Either(target))
    closed = target.close()
    if inspect.isawaitable(closed):
        await closed


def hostile_payloads(db: Db) -> dict[str, str]:
    """Payloads the decoder refuses, as SQL expressions, by what is wrong with them."""
    cases = {
        "a number of 5,000 digits": db.json('{"n": 1' + "0" * 5000 + "}"),
        "an array nested 5,000 deep": db.json("[" * 5000 + "]" * 5000),
        "64 times the size limit": db.json(json.dumps({"blob": "x" * (64 * LIMIT + 1)})),
    }
    if not db.pg:  # SQLite holds any value in any column
        cases |= {
            "text that is not JSON": "'not json'",
            "empty text": "''",
            "NaN": "'NaN'",
            "Infinity inside": """'{"a": Infinity}'""",
            "a BLOB": "x'7b7d'",
            "bytes that are not UTF-8": "CAST(x'ff' AS TEXT)",
        }
    return cases


def _id(value: str) -> str:
    return value.replace("-", "")


# -- 1. a claimed row that cannot be read fails alone -----------------------------------


async def test_a_claim_decodes_each_row_on_its_own(db: Db) -> None:
    """Every hostile payload in one claim batch: each comes back as a job marked
    unreadable (with why), the well-formed jobs claimed with them come back whole."""
    first = await db.q.enqueue("image", {"prompt": "before"}, priority=1)
    bad = {db.insert(sql): name for name, sql in hostile_payloads(db).items()}
    last = await db.q.enqueue("image", {"prompt": "after"}, priority=-1)
    # Rows another client inserts have no turn: they enter the line as the worker's
    # entrance puts them there.
    assert await db.q.enter_line() == len(bad)

    jobs = await db.q.claim("w1", limit=50)

    assert len(jobs) == len(bad) + 2
    by_id = {_id(str(j.id)): j for j in jobs}
    assert by_id[_id(str(first.id))].payload == {"prompt": "before"}
    assert by_id[_id(str(last.id))].payload == {"prompt": "after"}
    assert by_id[_id(str(first.id))].unreadable is None
    for job_id, name in bad.items():
        job = by_id[job_id]
        assert job.unreadable is not None, name
        assert job.unreadable.startswith("payload could not be decoded: "), (name, job.unreadable)
        assert job.payload is None, name
        assert job.status is Status.PROCESSING and job.attempts == 1
    # Each is still an ordinary held job: failing it works and records why.
    for job_id in bad:
        failed = await db.q.fail(by_id[job_id], by_id[job_id].unreadable or "", retry=False)
        assert failed.status is Status.FAILED
        assert failed.error is not None and failed.error.startswith("payload could not")
    assert (await db.q.get(first.id)).status is Status.PROCESSING


async def test_complete_and_claim_decodes_each_row_on_its_own(db: Db) -> None:
    """The worker's busy path: the batch is written, and the jobs claimed with it come
    back one by one, the hostile ones marked."""
    held = await db.q.enqueue("image", {"prompt": "held"}, priority=5)
    (job,) = await db.q.claim("w1", limit=1)
    assert job.id == held.id
    bad = {db.insert(sql) for sql in hostile_payloads(db).values()}
    good = await db.q.enqueue("image", {"prompt": "good"})
    assert await db.q.enter_line() == len(bad)

    written, claimed = await db.q.complete_and_claim(
        [Completion(job, {"ok": True})], "w1", limit=50
    )

    assert written == {held.id}
    assert (await db.q.get(held.id)).status is Status.COMPLETED
    by_id = {_id(str(j.id)): j for j in claimed}
    assert set(by_id) == bad | {_id(str(good.id))}
    assert by_id[_id(str(good.id))].payload == {"prompt": "good"}
    for job_id in bad:
        assert (by_id[job_id].unreadable or "").startswith("payload could not be decoded: ")


async def test_claims_run_in_a_transaction_decode_each_row_too(db: Db) -> None:
    """The claim run through SQLAlchemy's own execution (inside a transaction, where the
    queue's fast path on the driver connection does not apply) reads rows the same way."""
    target = db.q.target
    bad = db.insert(hostile_payloads(db)["a number of 5,000 digits"])
    assert await db.q.enter_line() == 1
    good = await db.q.enqueue("image", {"prompt": "good"})
    held = await db.q.enqueue("image", {"prompt": "held"}, priority=5)
    (first,) = await db.q.claim("w1", limit=1)
    assert first.id == held.id

    if isinstance(target, JobQueue):
        with target.engine.begin() as conn:
            written, claimed = _drive(
                conn, target._complete_and_claim_op([Completion(first)], "w2", None, None, 9, 30)
            )
    else:
        async with target.engine.begin() as conn:
            written, claimed = await _drive_async(
                conn, target._complete_and_claim_op([Completion(first)], "w2", None, None, 9, 30)
            )

    assert written == {held.id}
    by_id = {_id(str(j.id)): j for j in claimed}
    assert by_id[_id(str(good.id))].payload == {"prompt": "good"}
    assert (by_id[bad].unreadable or "").startswith("payload could not be decoded: ")


async def test_other_unreadable_columns_are_named(db: Db) -> None:
    """The history (``errors``) and ``result`` are read the same way; the message names
    the column, and a history that is not a list is refused too."""
    errors_sql = db.json("[" * 5000 + "]" * 5000)
    deep = db.insert(db.json('{"prompt": "fine"}'), errors=errors_sql)
    not_a_list = db.insert(db.json('{"prompt": "fine"}'), errors=db.json('{"a": 1}'))
    result = db.insert(db.json("{}"), result=db.json('{"n": 1' + "0" * 5000 + "}"))

    jobs = {_id(str(j.id)): j for j in await db.q.claim("w1", limit=10)}

    assert (jobs[deep].unreadable or "").startswith("errors could not be decoded: ")
    assert jobs[deep].errors == [] and jobs[deep].payload == {"prompt": "fine"}
    assert (jobs[not_a_list].unreadable or "").startswith("errors could not be decoded: ")
    assert (jobs[result].unreadable or "").startswith("result could not be decoded: ")
    # Failing them appends to their history, whatever it held.
    for job in jobs.values():
        failed = await db.q.fail(job, job.unreadable or "", retry=False)
        assert failed.status is Status.FAILED


async def test_a_lost_lease_is_recorded_whatever_the_history_holds(db: Db) -> None:
    """A claim taking over an expired lease, and the reaper, append to a history that a
    client left as something other than a JSON array (not JSON at all, on SQLite): the old
    value becomes the first entry, and nothing fails."""
    old = "'garbage'" if not db.pg else db.json('{"a": 1}')
    kept: Any = "garbage" if not db.pg else {"a": 1}
    past = (
        "now() - interval '1 minute'"
        if db.pg
        else "strftime('%Y-%m-%d %H:%M:%f000', 'now', '-60 seconds')"
    )
    held = {"status": "'processing'", "locked_by": "'gone'", "lease_expires_at": past}
    retake = db.insert(db.json("{}"), attempts="1", errors=old, **held)
    spent = db.insert(db.json("{}"), attempts="3", max_attempts="3", errors=old, **held)

    (job,) = await db.q.claim("w1", limit=5)
    assert _id(str(job.id)) == retake and job.attempts == 2 and job.unreadable is None
    assert job.errors[0] == kept
    assert job.errors[1]["error"] == "lease expired while held by gone"
    reaped = await db.q.reap()
    assert [(_id(str(i)), s) for i, s in reaped] == [(spent, Status.FAILED)]
    failed = await db.q.get(spent)
    assert failed.errors[0] == kept and len(failed.errors) == 2


@pytest.mark.parametrize("concurrency", [1, 8], ids=["busy-path", "claim-path"])
async def test_the_worker_fails_an_unreadable_job_at_once_and_no_other(
    migrated: tuple[str, str], concurrency: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker claiming hostile rows with good jobs fails each hostile one at once (one
    attempt, no retry, the reason stored) and completes every other job in its first
    attempt. At concurrency 1 every claim after the first is the busy path
    (`complete_and_claim`)."""
    url, table = migrated
    caplog.set_level(logging.INFO, logger="jobqueue")
    queue = CountingQueue(url, table=table, max_payload_bytes=LIMIT, lease=2)
    db = Db("", url, table, Either(queue))
    try:
        good = [
            (await queue.enqueue("echo", {"n": n}, priority=n % 3, max_attempts=5)).id
            for n in range(6)
        ]
        bad = [db.insert(sql, kind="'echo'") for sql in hostile_payloads(db).values()]
        seen: list[Any] = []

        async def echo(job: Job, ctx: WorkerContext) -> Any:
            seen.append(job.payload)
            return job.payload

        worker = Worker(queue, {"echo": echo}, concurrency=concurrency, lease=2, listen=False)
        finished = await asyncio.wait_for(worker.run_until_idle(), 60)

        assert finished == len(good) + len(bad)
        assert sorted(p["n"] for p in seen) == list(range(6))  # no handler saw a bad one
        for job_id in good:
            job = await queue.get(job_id)
            assert (job.status, job.attempts, job.errors) == (Status.COMPLETED, 1, [])
        for job_id in bad:
            job = await queue.get(job_id)
            assert (job.status, job.attempts) == (Status.FAILED, 1), job
            assert (job.error or "").startswith("payload could not be decoded: ")
        assert "payload could not be decoded" in caplog.text
        assert "claiming jobs failed" not in caplog.text
        if concurrency == 1:  # the busy path did claim hostile rows
            assert queue.unreadable_on_busy_path > 0
    finally:
        await queue.close()


class CountingQueue(AsyncJobQueue):
    """The real queue, counting the unreadable jobs its busy path (`complete_and_claim`)
    hands out, to show which path a test took."""

    unreadable_on_busy_path = 0

    async def complete_and_claim(self, *args: Any, **kwargs: Any) -> Any:
        written, claimed = await super().complete_and_claim(*args, **kwargs)
        self.unreadable_on_busy_path += sum(j.unreadable is not None for j in claimed)
        return written, claimed


# -- 2. a row in the line's way stops no one entering it --------------------------------


async def test_a_row_at_the_last_turn_stops_no_one_entering_the_line(db: Db) -> None:
    """Another client puts an unowned job in the line at the last turn the table allows.
    The jobs that follow it (its owner's next turns, and every turn of its queue and
    priority while it is the head) would pass that bound; the table refuses such a turn,
    and one refused turn would fail the whole entering batch, every owner's jobs with it,
    and each enqueue behind it. The turns stop at the bound instead: jobs inserted without
    a turn enter, enqueues (one, a batch, and on PostgreSQL a batch large enough to COPY)
    go through, and every one of them is claimed."""
    at_bound = db.insert(db.json("{}"), turn=repr(MAX_TURN))
    waiting = {db.insert(db.json("{}")) for _ in range(3)}
    waiting.add(db.insert(db.json("{}"), owner_id="'alice'"))

    assert await db.q.enter_line() == len(waiting)
    one = await db.q.enqueue("image", {})
    batch = await db.q.enqueue_many(
        [{"kind": "image", "payload": {}} for _ in range(COPY_MIN_JOBS if db.pg else 3)]
    )

    enqueued = {_id(str(j.id)) for j in [one, *batch]}
    for job_id in waiting | enqueued:
        assert (await db.q.get(job_id)).turn == MAX_TURN
    claimed = await db.q.claim("w1", limit=1000)
    assert {_id(str(j.id)) for j in claimed} == {at_bound} | waiting | enqueued


@pytest.mark.parametrize("db", ["sqlite", "aiosqlite"], indirect=True)
async def test_a_row_whose_id_cannot_be_read_stays_out_of_the_line(db: Db) -> None:
    """On SQLite the id is text another client may fill with anything. A row whose id is
    not 32 lower-case hex digits never enters the line (reading it would fail the whole
    entrance, and each claim that found nothing, for every job); the rows beside it enter
    and are claimed. (PostgreSQL's uuid column refuses such an id outright.)"""
    for value in ("'not-hex'", "''", "'" + "G" * 32 + "'", "'" + "0" * 33 + "'"):
        db.insert(db.json("{}"), id=value)
    good = {db.insert(db.json("{}")) for _ in range(2)}

    assert await db.q.enter_line() == len(good)
    claimed = await db.q.claim("w1", limit=10)
    assert {_id(str(j.id)) for j in claimed} == good
    assert await db.q.claim("w1", limit=10) == []  # an empty claim enters again: no error


# -- 3. reads survive any stored time ----------------------------------------------------


def _odd_times(db: Db) -> dict[str, dict[str, Any]]:
    """Rows with times jobqueue never writes: the column values as SQL, and what each
    time column must read as."""
    if db.pg:
        return {
            "due at minus infinity": {
                "sql": {"run_at": "'-infinity'", "created_at": "'-infinity'"},
                "reads": {"run_at": START, "created_at": START},
            },
            "never due": {
                "sql": {"run_at": "'infinity'"},
                "reads": {"run_at": END},
            },
            "failed, outside Python's years": {
                "sql": {
                    "status": "'failed'",
                    "created_at": "'294276-01-01 00:00:00+00'",
                    "started_at": "'4713-01-01 00:00:00+00 BC'",
                    "completed_at": "'infinity'",
                    "updated_at": "'-infinity'",
                },
                "reads": {
                    "created_at": END,
                    "started_at": START,
                    "completed_at": END,
                    "updated_at": START,
                },
            },
            "completed at infinity": {
                "sql": {"status": "'completed'", "completed_at": "'infinity'"},
                "reads": {"completed_at": END},
            },
        }
    return {
        "due at minus infinity": {
            "sql": {"run_at": "'-infinity'", "created_at": "''"},
            "reads": {"run_at": START, "created_at": START},
        },
        "never due": {
            "sql": {"run_at": "'infinity'", "lease_expires_at": "x'00'"},
            "reads": {"run_at": END, "lease_expires_at": END},
        },
        "failed, not times at all": {
            "sql": {
                "status": "'failed'",
                "created_at": "'yesterday'",
                "started_at": "12345",
                "completed_at": "'not a time'",
                "updated_at": "'2026-01-01T10:00:00+02:00'",
            },
            "reads": {
                "created_at": END,
                "started_at": START,
                "completed_at": END,
                "updated_at": datetime(2026, 1, 1, 8, tzinfo=UTC),
            },
        },
        "completed at infinity": {
            "sql": {"status": "'completed'", "completed_at": "'infinity'"},
            "reads": {"completed_at": END},
        },
    }


async def test_reads_survive_any_stored_time(db: Db) -> None:
    """get, list (every filter), stats, wait and the claim read rows whose times are at
    infinity, outside Python's years, or (SQLite) not times at all: each reads as the
    documented value instead of raising a driver error."""
    normal = await db.q.enqueue("image", {"prompt": "normal"})
    db.without_bounds()
    cases = _odd_times(db)
    ids = {name: db.insert(db.json("{}"), **case["sql"]) for name, case in cases.items()}

    for name, case in cases.items():
        job = await db.q.get(ids[name])
        for column, expected in case["reads"].items():
            assert getattr(job, column) == expected, (name, column, getattr(job, column))
        assert job.to_dict()["id"]  # renders
    listed = await db.q.list(limit=100)
    assert {_id(str(j.id)) for j in listed} == {*ids.values(), _id(str(normal.id))}
    failed_row = next(ids[name] for name in cases if name.startswith("failed"))
    failed = await db.q.list(status="failed", since=timedelta(days=365))
    assert [_id(str(j.id)) for j in failed] == [failed_row]
    assert await db.q.list(status=["failed", "completed"], limit=10)
    stats = {s.status: s for s in await db.q.stats(timedelta(days=365))}
    assert stats[Status.PENDING].count >= 2
    done = await db.q.wait(ids["completed at infinity"], timeout=5)
    assert done.completed_at == END

    # Inserted without a turn, the due row enters the line first; the one never due stays
    # out of it.
    assert await db.q.enter_line() == 1
    assert (await db.q.get(ids["never due"])).turn is None
    claimed = await db.q.claim("w1", limit=10)
    assert {_id(str(j.id)) for j in claimed} == {ids["due at minus infinity"], _id(str(normal.id))}
    due = next(j for j in claimed if _id(str(j.id)) == ids["due at minus infinity"])
    assert due.run_at == START


def test_the_cli_read_commands_survive_hostile_rows(
    db_url: str, table_name: str, tmp_path: Path
) -> None:
    """`jobqueue list` (also by status, also as JSON), `status`, `stats` and `check` on a
    table holding every kind of hostile row: `list` once as a user runs it, every read
    through the command's entry point."""
    migrate(db_url, table=table_name)
    queue = JobQueue(db_url, table=table_name, max_payload_bytes=LIMIT)
    try:
        db = Db("", db_url, table_name, Either(queue))
        normal = queue.enqueue("image", {"prompt": "normal"})
        db.ignore_bounds()
        hostile_ids = [
            db.insert(sql, status="'failed'", error="'refused'")
            for sql in hostile_payloads(db).values()
        ]
        times = {name: db.insert(db.json("{}"), **c["sql"]) for name, c in _odd_times(db).items()}
        odd_history = db.insert(db.json("[1]"), errors=db.json('[1, null, {"attempt": "x"}]'))
    finally:
        queue.close()
    failed_name = next(name for name in times if name.startswith("failed"))

    base = ("--database-url", db_url, "--table", table_name)

    def jq(*args: str) -> Result:
        return run_in_process(*base, *args, cwd=tmp_path)

    # Once as a user runs it (the installed script, its output through a real pipe); the
    # other reads in this process, through the same entry point.
    done = subprocess.run(
        [JOBQUEUE, *base, "list"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert not done.stderr.strip(), done.stderr

    for args in (
        ("list",),
        ("list", "--limit", "100", "--json"),
        ("list", "--status", "failed"),
        ("list", "--status", "failed", "--json"),
        ("list", "--status", "pending", "--status", "completed", "--since", "1d"),
        ("stats",),
        ("stats", "--json"),
        ("stats", "--since", "365d"),
        ("status", str(normal.id)),
        ("status", times["never due"]),
        ("status", odd_history),
    ):
        result = jq(*args)
        assert result.code == 0, (args, result.out, result.err)
        assert not result.err.strip(), (args, result.err)
    shown = json.loads(jq("status", times["never due"], "--json").out)
    assert shown["run_at"] == END.isoformat() and "unreadable" not in shown
    deep = json.loads(jq("status", hostile_ids[1], "--json").out)
    assert deep["payload"] is None
    assert deep["unreadable"] == "payload could not be decoded: it is nested too deeply to read"
    details = jq("status", hostile_ids[0]).out
    assert "unreadable" in details and "a number of more than 4300 digits" in details, details
    listed = json.loads(jq("list", "--limit", "100", "--json").out)["jobs"]
    assert len(listed) == 2 + len(hostile_payloads(db)) + len(times)
    failed = json.loads(jq("list", "--status", "failed", "--json").out)["jobs"]
    assert len(failed) == len(hostile_payloads(db)) + 1
    jq("status", times[failed_name]).one_line_error(1, "ended failed")
    checked = jq("check")
    assert "Traceback" not in checked.err, checked.err
    assert "can read" in checked.out, checked.out


# -- 4. claiming from no queue or no kind ------------------------------------------------


async def test_claiming_from_no_queue_or_no_kind_returns_nothing(db: Db) -> None:
    """``queues=[]`` and ``kinds=[]`` ask for nothing and get nothing, on every backend and
    driver; `complete_and_claim` with them still writes its batch."""
    job = await db.q.enqueue("image", {"prompt": "x"})
    assert await db.q.claim("w1", queues=[]) == []
    assert await db.q.claim("w1", kinds=[]) == []
    assert await db.q.claim("w1", queues=[], kinds=[]) == []
    assert (await db.q.get(job.id)).status is Status.PENDING
    (held,) = await db.q.claim("w1", limit=5)
    await db.q.enqueue("image", {"prompt": "y"})
    for empty in ({"queues": []}, {"kinds": []}):
        written, claimed = await db.q.complete_and_claim(
            [Completion(held, {"ok": 1})], "w1", limit=5, **empty
        )
        assert claimed == []
        if written:
            assert written == {held.id}
    assert (await db.q.get(held.id)).status is Status.COMPLETED


# -- 5. a failed progress write is not a failed attempt ---------------------------------


def _make_progress_writes_fail(db_url: str, table: str) -> None:
    """A trigger that refuses every progress write (and nothing else) with a real
    database error, as a hiccup would."""
    with sql_runner(db_url) as run:
        if db_url.startswith("postgresql"):
            run(
                f"CREATE FUNCTION {table}_hiccup() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN RAISE EXCEPTION 'simulated hiccup while writing progress'; END $$"
            )
            run(
                f"CREATE TRIGGER {table}_hiccup BEFORE UPDATE ON {table} FOR EACH ROW "
                "WHEN (OLD.status = 'processing' AND NEW.status = 'processing' AND "
                "(NEW.progress <> OLD.progress OR "
                "NEW.progress_message IS DISTINCT FROM OLD.progress_message)) "
                f"EXECUTE FUNCTION {table}_hiccup()"
            )
        else:
            run(
                f"CREATE TRIGGER {table}_hiccup BEFORE UPDATE ON {table} FOR EACH ROW "
                "WHEN OLD.status = 'processing' AND NEW.status = 'processing' AND "
                "(NEW.progress <> OLD.progress OR "
                "NEW.progress_message IS NOT OLD.progress_message) "
                "BEGIN SELECT RAISE(ABORT, 'simulated hiccup while writing progress'); END"
            )


async def test_a_failed_progress_write_is_not_a_failed_attempt(
    migrated: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses every progress write: handlers (async, and sync through
    `run_in_loop`) go on, their jobs complete in their first attempt, and each refused
    write, retried for one lease, is logged as dropped with a warning."""
    url, table = migrated
    _make_progress_writes_fail(url, table)
    caplog.set_level(logging.INFO, logger="jobqueue")
    queue = AsyncJobQueue(url, table=table)
    try:
        reached: list[str] = []

        async def slow(job: Job, ctx: WorkerContext) -> str:
            for percent in (10, 50, 90):
                await ctx.report_progress(percent, f"at {percent}")
            reached.append("async")
            return "done"

        def blocking(job: Job, ctx: WorkerContext) -> str:
            ctx.run_in_loop(ctx.report_progress(50, "halfway"))
            reached.append("sync")
            return "done"

        a = await queue.enqueue("slow", {})
        b = await queue.enqueue("blocking", {})
        # A short lease: each progress write is retried for one lease before it is dropped.
        worker = Worker(queue, {"slow": slow, "blocking": blocking}, listen=False, lease=2)
        await asyncio.wait_for(worker.run_until_idle(), 30)

        assert sorted(reached) == ["async", "sync"]
        for job_id in (a.id, b.id):
            job = await queue.get(job_id)
            assert (job.status, job.attempts, job.errors) == (Status.COMPLETED, 1, []), job
            assert job.progress == 100 and job.progress_message is None
        warnings = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "progress not recorded" in r.message
        ]
        assert len(warnings) == 4, [r.message for r in warnings]
        assert all("simulated hiccup" in r.message for r in warnings)
    finally:
        await queue.close()


async def test_a_progress_write_on_a_lost_job_still_raises_lease_lost(
    migrated: tuple[str, str],
) -> None:
    """Only database hiccups are swallowed: a job that is no longer ours still says so."""
    from jobqueue.errors import LeaseLost

    url, table = migrated
    queue = AsyncJobQueue(url, table=table)
    try:
        await queue.enqueue("image", {})
        (job,) = await queue.claim("w1")
        await queue.cancel(job.id)
        ctx = WorkerContext(queue, job, "w1", asyncio.get_running_loop())
        with pytest.raises(LeaseLost):
            await ctx.report_progress(10)
    finally:
        await queue.close()
