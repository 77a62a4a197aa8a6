"""Shipped migrations: idempotent, matching the schema module, installable from the wheel,
invisible to a host application's own Alembic, and printable as SQL for Supabase."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, inspect, make_url, text

from alembic import command
from jobqueue import (
    ConfigurationError,
    JobQueue,
    PayloadError,
    SchemaNotInstalled,
    Status,
    jobs_table,
    migrate,
)
from jobqueue.drivers.engines import make_engine
from jobqueue.migrations import _config, exclude_tables, include_object, schema_state, sql
from jobqueue.sql.table import budgets_table, limits_table, schedules_table, workers_table
from tests.conftest import downgrade, sql_runner

ROOT = Path(__file__).resolve().parents[2]


def test_migrate_is_idempotent_and_keeps_its_own_version_table(
    db_url: str, table_name: str
) -> None:
    assert not schema_state(db_url, table=table_name).installed
    migrate(db_url, table=table_name)
    migrate(db_url, table=table_name)
    state = schema_state(db_url, table=table_name)
    assert state.installed and state.up_to_date and state.current == state.head
    engine = make_engine(db_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {table_name, f"{table_name}_alembic_version", f"{table_name}_workers"} <= tables
    assert "alembic_version" not in tables


# SQLAlchemy cannot reflect SQLite's expression indexes (the idempotency index): it says so.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrated_database_matches_the_schema_module(db_url: str, table_name: str) -> None:
    migrate(db_url, table=table_name)
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            # Only this test's tables are reflected (the session's database holds every
            # other test's); the diffs looked at below are those of these tables alone.
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_name": lambda name, type_, _parents: (
                        type_ != "table" or table_name in (name or "")
                    ),
                },
            )
            metadata = jobs_table(table_name).metadata
            workers_table(table_name, metadata=metadata)
            limits_table(table_name, metadata=metadata)
            budgets_table(table_name, metadata=metadata)
            schedules_table(table_name, metadata=metadata)
            diffs = compare_metadata(ctx, metadata)
    finally:
        engine.dispose()
    ours = [d for d in diffs if table_name in repr(d) and "alembic_version" not in repr(d)]
    assert ours == []


# SQLAlchemy cannot reflect SQLite's expression indexes (the idempotency index): it says so.
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_a_host_apps_autogenerate_leaves_our_tables_alone(db_url: str) -> None:
    if db_url.startswith("postgresql"):
        # A schema of its own, first on the search path, as the host's database: the
        # session's database holds every other test's tables, and autogenerate reflects
        # each table it finds (that took most of a minute late in a full run).
        own = f"host_{uuid.uuid4().hex[:10]}"
        with sql_runner(db_url) as run:
            run(f'CREATE SCHEMA "{own}"')
        db_url = (
            make_url(db_url)
            .update_query_dict({"options": f"-csearch_path={own}"})
            .render_as_string(hide_password=False)
        )
    migrate(db_url)
    host = MetaData()
    Table("users", host, Column("id", Integer, primary_key=True))
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            plain = compare_metadata(MigrationContext.configure(conn), host)
            hooked = compare_metadata(
                MigrationContext.configure(conn, opts={"include_object": include_object}), host
            )
    finally:
        engine.dispose()
    assert any("generation_jobs" in repr(d) for d in plain)  # what the hook prevents
    assert not any("generation_jobs" in repr(d) for d in hooked)
    assert any(d[0] == "add_table" and d[1].name == "users" for d in hooked)
    hook = exclude_tables("my_jobs")
    assert not hook(None, "my_jobs_alembic_version", "table", True, None)
    assert not hook(None, "my_jobs_workers", "table", True, None)
    assert not hook(None, "my_jobs_limits", "table", True, None)
    assert hook(None, "users", "table", True, None)


def test_queue_on_an_empty_database_says_to_migrate(db_url: str, table_name: str) -> None:
    with JobQueue(db_url, table=table_name) as q, pytest.raises(SchemaNotInstalled) as err:
        q.enqueue("image", {})
    assert "jobqueue migrate" in str(err.value)


def test_offline_sql_for_the_supabase_editor() -> None:
    text = sql()
    for expected in (
        "CREATE TABLE generation_jobs_alembic_version",
        "CREATE TABLE generation_jobs (",
        "payload JSONB",
        "CREATE INDEX generation_jobs_claim_idx ON generation_jobs "
        "(queue, priority DESC, run_at, id) WHERE status = 'pending'",
        "REFERENCING NEW TABLE AS new_jobs",
        "CREATE TABLE generation_jobs_workers (",
        "COMMIT;",
    ):
        assert expected in text
    custom = sql(table="image_jobs", schema="jobs")
    assert "CREATE TABLE jobs.image_jobs (" in custom
    assert 'AFTER INSERT ON "jobs"."image_jobs"' in custom


@pytest.mark.postgres
def test_custom_schema_and_the_insert_notification(postgres_url: str, table_name: str) -> None:
    migrate(postgres_url, table=table_name, schema="jobqueue_custom")
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{table_name}"')
        with JobQueue(postgres_url, table=table_name, schema="jobqueue_custom") as q:
            q.enqueue_many([{"payload": {"i": i}, "queue": "fast"} for i in range(20)])
            q.enqueue("image", {}, queue="slow")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
    # one signal per queue per insert statement, not one per row
    assert sorted(got) == [(table_name, "fast"), (table_name, "slow")]


def test_rows_inserted_by_other_clients_get_every_default(db_url: str, raw_sql) -> None:  # type: ignore[no-untyped-def]
    migrate(db_url)
    raw_sql("INSERT INTO generation_jobs (payload, owner_id) VALUES ('{\"prompt\": \"x\"}', 'u')")
    with JobQueue(db_url) as q:
        (job,) = q.list()
        assert job.status.value == "pending" and job.kind == "image" and job.queue == "default"
        assert job.attempts == 0 and job.max_attempts == 3 and job.errors == []
        (claimed,) = q.claim("w")
        assert claimed.id == job.id and claimed.payload == {"prompt": "x"}
        if q.is_postgres:
            assert job.id.version == 7


def test_repository_alembic_entry_point_runs_the_same_revisions(
    db_url: str, table_name: str
) -> None:
    env = {**os.environ, "JOBQUEUE_DATABASE_URL": db_url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"table={table_name}", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    assert schema_state(db_url, table=table_name).up_to_date


def test_the_wheel_carries_the_migrations(tmp_path: Path, jobqueue_sqlite_url: str) -> None:
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("jobqueue-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    for needed in (
        "jobqueue/migrations/env.py",
        "jobqueue/migrations/script.py.mako",
        "jobqueue/migrations/versions/0001_create_jobs_table.py",
        "jobqueue/py.typed",
        # the admin dashboard's page and files, served from the package
        "jobqueue/web/static/admin.html",
        "jobqueue/web/static/admin.js",
        "jobqueue/web/static/admin.css",
    ):
        assert needed in names
    code = (
        "import jobqueue, sys; assert 'site' in jobqueue.__file__, jobqueue.__file__; "
        "jobqueue.migrate(sys.argv[1]); "
        "from jobqueue.migrations import schema_state; "
        "assert schema_state(sys.argv[1]).up_to_date"
    )
    subprocess.run(
        [sys.executable, "-c", code, jobqueue_sqlite_url],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        cwd=tmp_path,
        check=True,
    )


def _index_sql(db_url: str, name: str) -> str | None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
            else:
                query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
            found = conn.execute(text(query), {"name": name}).scalar()
    finally:
        engine.dispose()
    return None if found is None else str(found)


def _owner_index_sql(db_url: str, table: str) -> str:
    return str(_index_sql(db_url, f"{table}_owner_idx"))


def test_0002_keeps_unowned_jobs_out_of_the_owner_index_and_goes_back(
    db_url: str, table_name: str
) -> None:
    migrate(db_url, table=table_name, revision="0001")
    assert "WHERE" not in _owner_index_sql(db_url, table_name).upper()
    with sql_runner(db_url) as run:  # this version's enqueue needs revision 0003
        run(f"INSERT INTO {table_name} (owner_id) VALUES ('u')")
    migrate(db_url, table=table_name)
    assert "owner_id IS NOT NULL" in _owner_index_sql(db_url, table_name)
    engine = make_engine(db_url)
    try:
        cfg = _config(table_name, None)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
    finally:
        engine.dispose()
    assert "WHERE" not in _owner_index_sql(db_url, table_name).upper()
    assert schema_state(db_url, table=table_name).current == "0001"
    migrate(db_url, table=table_name)
    with JobQueue(db_url, table=table_name) as q:
        assert [j.owner_id for j in q.list(owner_id="u")] == ["u"]


def test_0003_keeps_every_row_and_fails_only_unfinished_jobs_out_of_bounds(
    db_url: str, table_name: str
) -> None:
    """Rows that 0002 allowed — keys repeated across queues, several owners, rows a client
    stored outside the new bounds — all survive 0003. The unfinished ones out of bounds
    are failed with a reason, so no worker's claim ever meets them; the rest keep their
    status."""
    t = table_name
    migrate(db_url, table=t, revision="0002")
    postgres = db_url.startswith("postgresql")
    unreadable = "infinity" if postgres else "soon"
    rows = [
        # (tag, status, extra columns)
        ("a", "pending", {"queue": "a", "idempotency_key": "k"}),
        ("b", "pending", {"queue": "b", "idempotency_key": "k"}),
        ("c", "pending", {"queue": "a", "idempotency_key": "k2", "owner_id": "alice"}),
        ("d", "pending", {"owner_id": "bob"}),
        ("e", "completed", {"owner_id": "bob"}),
        ("f", "pending", {"owner_id": "alice", "idempotency_key": "0123456789abcdef:k"}),
        ("too_urgent", "pending", {"priority": 5_000_000}),
        ("held_by_a_long_name", "processing", {"locked_by": "w" * 300, "attempts": 1}),
        ("never", "completed", {"run_at": unreadable}),
    ]
    with sql_runner(db_url) as run:
        for tag, status, extra in rows:
            columns = ", ".join(["payload", "status", *extra])
            values = ", ".join([":payload", ":status", *(f":{k}" for k in extra)])
            run(
                f"INSERT INTO {t} ({columns}) VALUES ({values})",
                payload=f'{{"tag": "{tag}"}}',
                status=status,
                **extra,
            )
        before = {
            json.loads(p)["tag"] if isinstance(p, str) else p["tag"]: (str(i), s)
            for i, p, s in run(f"SELECT id, payload, status FROM {t}")
        }
        migrate(db_url, table=t)
        after = {
            json.loads(p)["tag"] if isinstance(p, str) else p["tag"]: (str(i), s, e)
            for i, p, s, e in run(f"SELECT id, payload, status, error FROM {t}")
        }
        assert set(after) == set(before)
        for tag, (job_id, status) in before.items():
            assert after[tag][0] == job_id
            if tag in ("too_urgent", "held_by_a_long_name"):
                assert after[tag][1] == "failed" and "migration 0003" in after[tag][2]
            else:
                assert after[tag][1:] == (status, None), tag
        never = run(f"SELECT CAST(run_at AS TEXT) FROM {t} WHERE id = :id", id=before["never"][0])
        assert never == [(unreadable,)]
        if postgres:
            invalid = run(
                "SELECT conname FROM pg_constraint WHERE conrelid = CAST(:t AS regclass) "
                "AND NOT convalidated ORDER BY 1",
                t=t,
            )
            # Kept NOT VALID where an old row breaks them; every other one is validated.
            assert [n for (n,) in invalid] == [
                f"{t}_locked_by_check",
                f"{t}_priority_check",
                f"{t}_times_check",
            ]
        with pytest.raises(Exception, match=f"{t}_priority_check"):
            run(f"INSERT INTO {t} (priority) VALUES (5000000)")
    with JobQueue(db_url, table=t) as q:
        claimed = q.claim("w", limit=10, queues=["default", "a", "b"])
        assert sorted(j.payload["tag"] for j in claimed) == ["a", "b", "c", "d", "f"]
        urgent = next(j for j in q.list(status="failed") if j.payload["tag"] == "too_urgent")
        if q.is_postgres:
            # PostgreSQL checks the whole row on every update: retrying it as it is would
            # keep the bad value, and our error names the bound. (SQLite checks only the
            # constraints on the columns an update sets: `retry` does not set priority.)
            with pytest.raises(PayloadError, match="priority_check"):
                q.retry(urgent.id)
        with sql_runner(db_url) as run:
            run(f"UPDATE {t} SET priority = 0 WHERE priority = 5000000")
        assert q.retry(urgent.id).status is Status.PENDING
        assert [j.id for j in q.claim("w")] == [urgent.id]


def test_0003_goes_back_to_0002_unless_two_owners_share_a_key(db_url: str, table_name: str) -> None:
    t = table_name
    migrate(db_url, table=t)
    with JobQueue(db_url, table=t) as q:
        alice = q.enqueue("image", {}, owner_id="alice", idempotency_key="k")
        q.enqueue("image", {}, owner_id="bob", idempotency_key="k")
    with pytest.raises(ConfigurationError, match="more than one owner") as refused:
        downgrade(db_url, t, "0002")
    assert "idempotency_key = NULL" in refused.value.hint
    assert schema_state(db_url, table=t).up_to_date
    with sql_runner(db_url) as run:
        run(f"UPDATE {t} SET idempotency_key = NULL WHERE owner_id = 'bob'")
        downgrade(db_url, t, "0002")
        assert schema_state(db_url, table=t).current == "0002"
        run(f"INSERT INTO {t} (priority) VALUES (5000000)")  # no bounds at 0002
        with pytest.raises(Exception, match=r"(?i)unique"):
            run(f"INSERT INTO {t} (owner_id, idempotency_key) VALUES ('carol', 'k')")
        migrate(db_url, table=t)
        assert run(f"SELECT count(*) FROM {t}") == [(3,)]
    with JobQueue(db_url, table=t) as q:
        assert q.get(alice.id).idempotency_key == "k"
        assert q.enqueue("image", {}, owner_id="carol", idempotency_key="k").owner_id == "carol"
        assert len(q.list(status="failed")) == 1  # the out-of-bounds row of 0002's time


def _checks(db_url: str, table: str) -> dict[str, str]:
    """The table's check constraints as the database describes them, by name less the table's."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                found = conn.execute(
                    text(
                        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                        "WHERE conrelid = CAST(:t AS regclass) AND contype = 'c'"
                    ),
                    {"t": table},
                ).all()
            else:
                ddl = conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
                    {"t": table},
                ).scalar_one()
                # Table constraints end their line; the column constraints that ALTER TABLE
                # ADD COLUMN appended (migration 0005) end where the next column starts.
                found = re.findall(
                    r'CONSTRAINT "?(\w+)"? CHECK \((.*?)\)(?=,? *\n|, ")', ddl + "\n"
                )
    finally:
        engine.dispose()
    return {name.removeprefix(table): definition for name, definition in found}


def test_migrated_check_constraints_match_the_schema_module(db_url: str, table_name: str) -> None:
    migrate(db_url, table=table_name)
    fresh = f"{table_name}_x"
    engine = make_engine(db_url)
    try:
        metadata = jobs_table(fresh).metadata
        limits_table(fresh, metadata=metadata)
        budgets_table(fresh, metadata=metadata)
        schedules_table(fresh, metadata=metadata)
        metadata.create_all(engine)
    finally:
        engine.dispose()
    migrated, declared = _checks(db_url, table_name), _checks(db_url, fresh)
    assert len(migrated) == 21
    assert {k: v.replace(fresh, table_name) for k, v in declared.items()} == migrated
    migrated = _checks(db_url, f"{table_name}_limits")
    declared = _checks(db_url, f"{fresh}_limits")
    assert len(migrated) == 7
    assert declared == migrated
    migrated = _checks(db_url, f"{table_name}_budgets")
    declared = _checks(db_url, f"{fresh}_budgets")
    assert len(migrated) == 4
    assert declared == migrated
    migrated = _checks(db_url, f"{table_name}_schedules")
    declared = _checks(db_url, f"{fresh}_schedules")
    assert len(migrated) == 7
    assert declared == migrated


@pytest.mark.postgres
def test_the_sql_script_runs_twice_and_upgrades_an_older_database(
    postgres_url: str, table_name: str
) -> None:
    """`jobqueue sql` as pasted into psql: a second run changes nothing, and the script of
    a newer version brings a database at an older revision up to date."""
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    script = sql(table=table_name)
    older = f"{table_name}_old"
    migrate(postgres_url, table=older, revision="0002")
    for name, text_ in ((table_name, script), (table_name, script), (older, sql(table=older))):
        done = subprocess.run(
            ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-q"],
            input=text_, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "ERROR" not in done.stderr, done.stderr
        assert schema_state(postgres_url, table=name).up_to_date
    with JobQueue(postgres_url, table=older) as q:
        assert q.enqueue("image", {}, owner_id="a", idempotency_key="k").owner_id == "a"


def test_0005_goes_back_to_0004_and_keeps_every_row_and_index(db_url: str, table_name: str) -> None:
    """Going back drops the turns, limit keys and limits, and nothing else: on SQLite the
    columns are dropped in place, so the idempotency index (an expression index a table
    rebuild would lose) stays."""
    t = table_name
    migrate(db_url, table=t)
    with JobQueue(db_url, table=t) as q:
        q.set_limit("api", max_running=2)
        kept = q.enqueue("image", {}, owner_id="alice", idempotency_key="k", limit_key="api")
    downgrade(db_url, t, "0004")
    assert schema_state(db_url, table=t).current == "0004"
    engine = make_engine(db_url)
    try:
        inspector = inspect(engine)
        assert f"{t}_limits" not in inspector.get_table_names()
        columns = {c["name"] for c in inspector.get_columns(t)}
    finally:
        engine.dispose()
    assert not {"turn", "limit_key"} & columns
    assert _index_sql(db_url, f"{t}_turn_idx") is None
    assert _index_sql(db_url, f"{t}_entry_idx") is None
    assert "run_at" in str(_index_sql(db_url, f"{t}_claim_idx"))
    assert "coalesce" in str(_index_sql(db_url, f"{t}_idempotency_idx")).lower()
    migrate(db_url, table=t)
    with JobQueue(db_url, table=t) as q:
        again = q.enqueue("image", {}, owner_id="alice", idempotency_key="k")
        assert again.id == kept.id and again.limit_key is None
        q.enter_line()
        assert [j.id for j in q.claim("w")] == [kept.id]


def test_0008_adds_deadlines_and_expired_and_goes_back_to_0006(
    db_url: str, table_name: str
) -> None:
    """Up from 0006 with rows in place (no table copy on SQLite: the rows and the
    idempotency index stay), then back: an expired job becomes a cancelled one, the old
    status check returns, the deadline's column and index go."""
    t = table_name
    migrate(db_url, table=t, revision="0006")
    with sql_runner(db_url) as run:
        run(f"INSERT INTO {t} (owner_id, idempotency_key) VALUES ('u', 'k')")
        with pytest.raises(Exception, match=r"(?i)check constraint"):
            run(f"INSERT INTO {t} (status) VALUES ('expired')")
    migrate(db_url, table=t, revision="0008")
    assert schema_state(db_url, table=t).current == "0008"
    assert "start_by" in str(_index_sql(db_url, f"{t}_deadline_idx"))
    migrate(db_url, table=t)  # the queue below reads the columns of later revisions too
    assert "coalesce" in str(_index_sql(db_url, f"{t}_idempotency_idx")).lower()
    with JobQueue(db_url, table=t) as q:
        (old,) = q.list()
        assert old.start_by is None and old.status is Status.PENDING
        assert q.enqueue("image", {}, owner_id="u", idempotency_key="k").id == old.id
        gone = q.enqueue("image", {}, expires_in=0.01)
        time.sleep(0.1)
        assert [j.id for j in q.expire()] == [gone.id]
    downgrade(db_url, t, "0006")
    assert schema_state(db_url, table=t).current == "0006"
    assert _index_sql(db_url, f"{t}_deadline_idx") is None
    engine = make_engine(db_url)
    try:
        assert "start_by" not in {c["name"] for c in inspect(engine).get_columns(t)}
    finally:
        engine.dispose()
    with sql_runner(db_url) as run:
        rows = run(f"SELECT status, error FROM {t} WHERE owner_id IS NULL")
        assert [(r[0], "expired" in r[1]) for r in rows] == [("cancelled", True)]
        with pytest.raises(Exception, match=r"(?i)check constraint"):
            run(f"INSERT INTO {t} (status) VALUES ('expired')")
    migrate(db_url, table=t)
    with JobQueue(db_url, table=t) as q:
        assert q.retry(q.list(status="cancelled")[0].id).status is Status.PENDING


def test_0009_adds_the_schedules_table_and_goes_back_to_0008(db_url: str, table_name: str) -> None:
    """Up from 0008 with a job in place, a schedule made and run, then back: the schedules
    table and its index go, the jobs stay (their keys too), and up again works."""
    t = table_name
    migrate(db_url, table=t, revision="0008")
    with JobQueue(db_url, table=t) as q:
        kept = q.enqueue("image", {}, idempotency_key="k")
    migrate(db_url, table=t, revision="0009")
    assert schema_state(db_url, table=t).current == "0009"
    assert "next_tick" in str(_index_sql(db_url, f"{t}_schedules_due_idx"))
    with JobQueue(db_url, table=t) as q:
        assert q.add_schedule("s", kind="image", every=60).every == 60
        with pytest.raises(Exception, match=r"(?i)check constraint"), sql_runner(db_url) as run:
            run(
                f"INSERT INTO {t}_schedules (name, kind, next_tick) VALUES ('x', 'k', '2026-01-01')"
            )
    downgrade(db_url, t, "0008")
    assert schema_state(db_url, table=t).current == "0008"
    assert _index_sql(db_url, f"{t}_schedules_due_idx") is None
    engine = make_engine(db_url)
    try:
        assert f"{t}_schedules" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
    migrate(db_url, table=t)
    with JobQueue(db_url, table=t) as q:
        assert q.enqueue("image", {}, idempotency_key="k").id == kept.id
        assert q.list_schedules() == []


def test_0010_adds_the_trace_context_and_goes_back_to_0009(db_url: str, table_name: str) -> None:
    """Up from 0009 with a row in place: the row keeps no trace (NULL), a stored trace is
    bounded by its check constraint; back: the column goes, the rows stay."""
    t = table_name
    migrate(db_url, table=t, revision="0009")
    with sql_runner(db_url) as run:
        run(f"INSERT INTO {t} (kind) VALUES ('before')")
    migrate(db_url, table=t, revision="0010")
    assert schema_state(db_url, table=t).current == "0010"
    with JobQueue(db_url, table=t) as q:
        (old,) = q.list()
        assert old.kind == "before" and old.trace_context is None
    with sql_runner(db_url) as run:
        run(f"INSERT INTO {t} (kind, trace_context) VALUES ('traced', '{{}}')")
        with pytest.raises(Exception, match=r"(?i)check constraint"):
            run(f"INSERT INTO {t} (trace_context) VALUES ('{'x' * 1025}')")
    downgrade(db_url, t, "0009")
    assert schema_state(db_url, table=t).current == "0009"
    engine = make_engine(db_url)
    try:
        assert "trace_context" not in {c["name"] for c in inspect(engine).get_columns(t)}
    finally:
        engine.dispose()
    with sql_runner(db_url) as run:
        assert sorted(r[0] for r in run(f"SELECT kind FROM {t}")) == ["before", "traced"]
