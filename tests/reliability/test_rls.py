"""Row-level security as Supabase runs it, emulated on plain PostgreSQL.

The test database gets Supabase's roles (``anon``, ``authenticated``, ``service_role``) and an
``auth.uid()`` that reads the JWT ``sub`` claim from the session settings, as PostgREST sets
them — each created only where missing (roles are cluster-wide and shared with other people's
test runs, so they are created idempotently and never dropped). Each queue then connects as
one of those roles, the way Supabase's REST API or a worker holding the service key would.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, make_url, text
from sqlalchemy import exc as sa_exc

from jobqueue import (
    JobQueue,
    NewJob,
    PermissionDenied,
    Status,
    migrate,
)
from jobqueue.drivers.engines import make_engine, normalise_url
from jobqueue.errors import ConfigurationError
from jobqueue.migrations import schema_state
from jobqueue.migrations.supabase import apply_rls
from jobqueue.operations import COPY_MIN_JOBS, DEFAULT_MAX_PAYLOAD_BYTES, MAX_JSON_DEPTH
from jobqueue.sql.rls import supabase_sql
from jobqueue.sql.table import OWNER_COLUMNS
from tests.support.supabase import create_role, emulate_supabase, engine_as

pytestmark = pytest.mark.postgres

JOBQUEUE = shutil.which("jobqueue", path=str(Path(sys.executable).parent)) or "jobqueue"


@pytest.fixture
def rls_table(postgres_url: str, table_name: str) -> str:
    emulate_supabase(postgres_url)
    migrate(postgres_url, table=table_name)
    apply_rls(postgres_url, table=table_name)
    return table_name


@pytest.fixture
def as_role(postgres_url: str, rls_table: str) -> Iterator[Callable[..., JobQueue]]:
    """``as_role("authenticated", sub=uid)`` → a JobQueue acting as that role and user."""
    engines: list[Engine] = []

    def make(role: str, sub: str | None = None) -> JobQueue:
        engine = engine_as(postgres_url, role, sub)
        engines.append(engine)
        return JobQueue(engine, table=rls_table)

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def admin(postgres_url: str, rls_table: str) -> Iterator[JobQueue]:
    """The table owner (bypasses RLS): to look at what really is in the table."""
    q = JobQueue(postgres_url, table=rls_table)
    yield q
    q.close()


def raw(queue: JobQueue, sql: str, **params: Any) -> list[Any]:
    with queue.engine.begin() as conn:
        result = conn.execute(text(sql), params)
        return list(result) if result.returns_rows else []


def users() -> tuple[str, str]:
    return str(uuid.uuid4()), str(uuid.uuid4())


def visible(queue: JobQueue, where: str = "true", **params: Any) -> list[dict[str, Any]]:
    """What a user reads through Supabase: the owner's columns, named (supabase-js
    ``select("status, …")``), of the rows RLS lets them see."""
    columns = ", ".join(OWNER_COLUMNS)
    rows = raw(
        queue,
        f"SELECT {columns} FROM {queue.table_name} WHERE {where} ORDER BY created_at",
        **params,
    )
    return [dict(zip(OWNER_COLUMNS, row, strict=True)) for row in rows]


def test_a_user_inserts_and_reads_only_their_own_jobs(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    alice_id, bob_id = users()
    alice, bob = as_role("authenticated", alice_id), as_role("authenticated", bob_id)
    mine = alice.enqueue("image", {"prompt": "a lego cat"}, owner_id=alice_id)
    theirs = bob.enqueue("image", {"prompt": "a lego dog"}, owner_id=bob_id)
    assert mine.status is Status.PENDING and mine.owner_id == alice_id
    stored = admin.get(mine.id)
    assert visible(alice) == [{c: getattr(stored, c) for c in OWNER_COLUMNS}]
    assert [j["id"] for j in visible(bob)] == [theirs.id]
    assert {j.id for j in admin.list()} == {mine.id, theirs.id}


def test_a_user_may_give_a_deadline_but_never_insert_an_expired_job(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    """Through the library (which names ``start_by`` only with a deadline, so a table set
    up before deadlines existed still takes other enqueues) and as supabase-js would."""
    alice_id, _ = users()
    alice = as_role("authenticated", alice_id)
    plain = alice.enqueue("image", {"prompt": "x"}, owner_id=alice_id)
    timed = alice.enqueue("image", {"prompt": "y"}, owner_id=alice_id, expires_in=60)
    assert plain.start_by is None and timed.start_by is not None
    assert admin.get(timed.id).start_by == timed.start_by
    raw(
        alice,
        f"INSERT INTO {alice.table_name} (owner_id, kind, start_by) "
        "VALUES (:o, 'image', now() + interval '5 minutes')",
        o=alice_id,
    )
    with pytest.raises(sa_exc.DBAPIError, match="permission denied"):
        raw(
            alice,
            f"INSERT INTO {alice.table_name} (owner_id, status) VALUES (:o, 'expired')",
            o=alice_id,
        )
    assert {j["start_by"] is not None for j in visible(alice)} == {True, False}
    assert len(admin.list()) == 3


def test_a_user_cannot_read_another_users_job_by_id(as_role: Callable[..., JobQueue]) -> None:
    alice_id, bob_id = users()
    alice, bob = as_role("authenticated", alice_id), as_role("authenticated", bob_id)
    theirs = bob.enqueue("image", {"prompt": "private"}, owner_id=bob_id)
    assert visible(alice, "id = :id", id=theirs.id) == []
    assert visible(alice, "owner_id = :o", o=bob_id) == []
    assert raw(alice, "SELECT count(*) FROM " + alice.table_name) == [(0,)]


def test_a_user_cannot_insert_for_someone_else_or_a_finished_job(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    alice_id, bob_id = users()
    alice = as_role("authenticated", alice_id)
    with pytest.raises(PermissionDenied) as refused:
        alice.enqueue("image", {"prompt": "x"}, owner_id=bob_id)
    assert isinstance(refused.value.__cause__, Exception)  # ours, translated from the driver
    assert "row-level security" in str(refused.value)
    with pytest.raises(PermissionDenied):
        alice.enqueue("image", {"prompt": "no owner"})
    # status and result_url are not even columns a user may name.
    with pytest.raises(sa_exc.DBAPIError, match="permission denied"):
        raw(
            alice,
            f"INSERT INTO {alice.table_name} (owner_id, status, result_url) "
            "VALUES (:o, 'completed', 'https://evil.example/fake.png')",
            o=alice_id,
        )
    assert admin.list() == []


def test_a_user_cannot_choose_what_only_the_worker_or_operator_sets(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    """A provider task id would make the worker "resume" someone else's image; a priority
    would jump the queue: the column grant and the policy keep both out of a user's hands."""
    alice_id, _ = users()
    alice = as_role("authenticated", alice_id)
    t = alice.table_name
    columns_refused = {
        "remote_task_id": "'someone-elses-task'",
        "status": "'pending'",
        "locked_by": "NULL",
        "progress": "50",
        "errors": "'[]'::jsonb",
        "result": "'{}'::jsonb",
        "attempts": "0",
        "started_at": "NULL",
        # A place at the front of the line, or a limit key without caps.
        "turn": "-1e9",
        "limit_key": "'uncapped'",
    }
    for column, value in columns_refused.items():
        with pytest.raises(sa_exc.DBAPIError, match="permission denied"):
            raw(
                alice,
                f"INSERT INTO {t} (owner_id, payload, {column}) VALUES (:o, '{{}}', {value})",
                o=alice_id,
            )
    with pytest.raises(PermissionDenied, match="row-level security"):
        alice.enqueue("image", {"prompt": "me first"}, owner_id=alice_id, priority=1000)
    with pytest.raises(PermissionDenied, match="row-level security"):
        alice.enqueue("image", {"prompt": "again"}, owner_id=alice_id, max_attempts=50)
    # A kind or queue outside the allowed lists (image in default) is refused too.
    with pytest.raises(PermissionDenied, match="row-level security"):
        alice.enqueue("admin-cleanup", {}, owner_id=alice_id)
    with pytest.raises(PermissionDenied, match="row-level security"):
        alice.enqueue("image", {}, owner_id=alice_id, queue="premium")
    with pytest.raises(sa_exc.DBAPIError, match="row-level security"):
        raw(
            alice,
            f"INSERT INTO {t} (owner_id, payload, run_at) "
            "VALUES (:o, '{}', now() - interval '1 day')",
            o=alice_id,
        )
    assert admin.list() == []
    # What the browser does (supabase-js: kind, payload, owner_id) still works.
    raw(
        alice,
        f"INSERT INTO {t} (kind, payload, owner_id) VALUES ('image', '{{\"p\": 1}}', :o)",
        o=alice_id,
    )
    (job,) = admin.list()
    assert (job.priority, job.remote_task_id, job.status) == (0, None, Status.PENDING)


def test_the_allowed_kinds_and_queues_can_be_widened(
    postgres_url: str, rls_table: str, as_role: Callable[..., JobQueue]
) -> None:
    apply_rls(postgres_url, table=rls_table, user_kinds=("image", "upscale"), user_queues=("a",))
    alice_id, _ = users()
    alice = as_role("authenticated", alice_id)
    assert alice.enqueue("upscale", {}, owner_id=alice_id, queue="a").kind == "upscale"
    with pytest.raises(PermissionDenied):
        alice.enqueue("image", {}, owner_id=alice_id)  # "default" is no longer allowed
    for bad in ((), "image", ("it's",)):
        with pytest.raises(ConfigurationError):
            supabase_sql(rls_table, user_kinds=bad)


def test_a_user_cannot_update_or_delete_any_job(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    alice_id, _ = users()
    alice = as_role("authenticated", alice_id)
    mine = alice.enqueue("image", {"prompt": "x"}, owner_id=alice_id)
    refused: list[Callable[[], object]] = [
        lambda: alice.cancel(mine.id),
        lambda: alice.claim("sneaky-worker"),
        lambda: alice.prune(older_than=0),
        lambda: alice.reap(),
    ]
    for attempt in refused:
        with pytest.raises(PermissionDenied) as info:
            attempt()
        assert "RLS" in info.value.hint
    for sql in ("UPDATE {t} SET priority = 99", "DELETE FROM {t}"):
        with pytest.raises(sa_exc.DBAPIError, match="permission denied"):
            raw(alice, sql.format(t=alice.table_name))
    assert admin.get(mine.id) == mine


def test_anon_sees_and_writes_nothing(as_role: Callable[..., JobQueue], admin: JobQueue) -> None:
    alice_id, _ = users()
    job = admin.enqueue("image", {"prompt": "x"}, owner_id=alice_id)
    anon = as_role("anon")
    for attempt in (
        lambda: anon.get(job.id),
        lambda: anon.list(),
        lambda: anon.enqueue("image", {}, owner_id=alice_id),
        lambda: anon.cancel(job.id),
    ):
        with pytest.raises(PermissionDenied):
            attempt()
    assert [j.id for j in admin.list()] == [job.id]


def test_large_batches_under_rls_are_inserted_not_copied(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    """COPY FROM refuses tables where row-level security applies (and a user has column
    grants only), so `enqueue_many` INSERTs for these roles however large the batch."""
    alice_id, _ = users()
    alice = as_role("authenticated", alice_id)
    n = COPY_MIN_JOBS
    mine = alice.enqueue_many([NewJob(payload={"n": i}, owner_id=alice_id) for i in range(n)])
    worker = as_role("service_role")
    theirs = worker.enqueue_many([NewJob(payload={"n": i}) for i in range(n)])
    assert [admin.get(j.id) for j in mine + theirs] == mine + theirs
    assert len(visible(alice)) == n


def test_a_users_jobs_take_their_turn_through_the_workers(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    """A user's role may not place its jobs in the fair-share line: they enter it through
    the worker role, behind nobody's backlog; the limits are the worker's business."""
    alice_id, bob_id = users()
    worker = as_role("service_role")
    worker.enqueue_many([NewJob(payload={"n": i}, owner_id=bob_id) for i in range(20)])
    alice = as_role("authenticated", alice_id)
    mine = alice.enqueue("image", {"prompt": "a lego cat"}, owner_id=alice_id)
    assert mine.turn is None
    with pytest.raises(PermissionDenied, match="limit key"):
        alice.enqueue("image", {}, owner_id=alice_id, limit_key="uncapped")
    assert worker.enter_line() == 1  # what each worker does every second
    claimed = worker.claim("w", limit=2)
    assert [j.owner_id for j in claimed] == [bob_id, alice_id]
    limits = f"{alice.table_name}_limits"
    with pytest.raises(sa_exc.DBAPIError, match="permission denied"):
        raw(alice, f"SELECT * FROM {limits}")
    worker.set_limit("image", max_running=1)
    assert [r.name for r in worker.list_limits()] == ["image"]


def test_the_schedules_are_the_worker_roles_alone(as_role: Callable[..., JobQueue]) -> None:
    """A user who could write a schedule could have the workers enqueue any job, as often
    as they like: users and anon may neither read nor write the schedules table."""
    worker = as_role("service_role")
    worker.add_schedule("nightly", kind="image", every=3600)
    assert [s.name for s in worker.list_schedules()] == ["nightly"]
    schedules = f"{worker.table_name}_schedules"
    for role, sub in (("authenticated", users()[0]), ("anon", None)):
        other = as_role(role, sub)
        with pytest.raises(sa_exc.DBAPIError, match="permission denied"):
            raw(other, f"SELECT * FROM {schedules}")
        with pytest.raises(sa_exc.DBAPIError, match="permission denied"):
            raw(other, f"DELETE FROM {schedules}")


def test_the_worker_role_claims_and_finishes_everyones_jobs(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    alice_id, bob_id = users()
    as_role("authenticated", alice_id).enqueue("image", {"n": 1}, owner_id=alice_id)
    as_role("authenticated", bob_id).enqueue("image", {"n": 2}, owner_id=bob_id)
    worker = as_role("service_role")
    claimed = worker.claim("worker-1", limit=5, lease=30)
    assert {j.owner_id for j in claimed} == {alice_id, bob_id}
    first, second = claimed
    worker.heartbeat(first)
    worker.set_progress(first, 50, "halfway")
    done = worker.complete(first, {"images": ["https://x/1.png"]}, "https://x/1.png")
    failed = worker.fail(second, "provider said no", retry=False)
    assert done.status is Status.COMPLETED and failed.status is Status.FAILED
    assert worker.prune(older_than=0) == 2
    assert admin.list() == []


def test_rls_setup_is_idempotent_and_leaves_auth_uid_alone(
    postgres_url: str, rls_table: str, as_role: Callable[..., JobQueue]
) -> None:
    definition = "SELECT pg_get_functiondef('auth.uid()'::regprocedure)"
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            before = conn.execute(text(definition)).scalar()
        apply_rls(postgres_url, table=rls_table)
        # The pasted script, as the Supabase SQL Editor (or psql) runs it: all at once.
        dsn = normalise_url(postgres_url, asynchronous=False).set(drivername="postgresql")
        script = supabase_sql(rls_table)
        with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as pg:
            pg.execute(script.encode())
            pg.execute(script.encode())
        with engine.connect() as conn:
            after = conn.execute(text(definition)).scalar()
            policies = conn.execute(
                text("SELECT policyname FROM pg_policies WHERE tablename = :t ORDER BY 1"),
                {"t": rls_table},
            ).all()
    finally:
        engine.dispose()
    assert after == before
    assert [p for (p,) in policies] == [
        "jobqueue_owner_insert",
        "jobqueue_owner_select",
        "jobqueue_worker_all",
    ]
    alice_id, _ = users()
    alice = as_role("authenticated", alice_id)
    job = alice.enqueue("image", {}, owner_id=alice_id)
    assert [j["owner_id"] for j in visible(alice, "id = :id", id=job.id)] == [alice_id]


def test_rls_in_a_named_schema(postgres_url: str, table_name: str) -> None:
    emulate_supabase(postgres_url)
    migrate(postgres_url, table=table_name, schema="rls_jobs")
    apply_rls(postgres_url, table=table_name, schema="rls_jobs")
    alice_id = str(uuid.uuid4())
    user_engine = engine_as(postgres_url, "authenticated", alice_id)
    worker_engine = engine_as(postgres_url, "service_role")
    try:
        alice = JobQueue(user_engine, table=table_name, schema="rls_jobs")
        worker = JobQueue(worker_engine, table=table_name, schema="rls_jobs")
        job = alice.enqueue("image", {"prompt": "x"}, owner_id=alice_id)
        (claimed,) = worker.claim("w")
        worker.complete(claimed, {"ok": True})
        with user_engine.connect() as conn:
            status = conn.execute(
                text(f'SELECT status FROM rls_jobs."{table_name}" WHERE id = :id'), {"id": job.id}
            ).scalar()
        assert status == Status.COMPLETED.value
    finally:
        user_engine.dispose()
        worker_engine.dispose()


def test_rls_refuses_to_run_without_auth_uid(postgres_url: str, table_name: str) -> None:
    """On a database without auth.uid() nothing is created in its place: a clear error."""
    server = normalise_url(postgres_url, asynchronous=False)
    name = f"{server.database}_noauth"
    admin = make_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url, table=table_name)
        with pytest.raises(ConfigurationError, match=r"auth\.uid\(\)"):
            apply_rls(url, table=table_name)
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, autocommit=True) as pg:
            with pytest.raises(psycopg.errors.RaiseException, match="is for Supabase"):
                pg.execute(supabase_sql(table_name).encode())
            pg.execute("ROLLBACK")  # the script's own BEGIN left a failed transaction open
            (has_auth,) = pg.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'auth'"
            ).fetchone() or (None,)
            (rls_on,) = pg.execute(
                "SELECT relrowsecurity FROM pg_class WHERE relname = %s", (table_name,)
            ).fetchone() or (None,)
        assert has_auth == 0 and rls_on is False
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_rls_setup_validates_names_before_any_sql() -> None:
    for bad in ("jobs; drop table x", '"quoted"', "ünïcode", "x" * 64, ""):
        with pytest.raises(ConfigurationError):
            supabase_sql(bad)
        with pytest.raises(ConfigurationError):
            supabase_sql("jobs", schema=bad)
        with pytest.raises(ConfigurationError):
            supabase_sql("jobs", worker_role=bad)
    with pytest.raises(ConfigurationError):
        supabase_sql("jobs", worker_role="authenticated")


def test_apply_rls_refuses_sqlite(jobqueue_sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        apply_rls(jobqueue_sqlite_url)


# -- what an owner may store and read; the pasted script --------------------------------


def test_a_user_may_use_a_key_someone_else_used(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    """Keys are scoped per owner in the table itself: a direct insert with another user's
    key is stored (it used to fail on the unique index, telling bob that alice used it)."""
    alice_id, bob_id = users()
    alice, bob = as_role("authenticated", alice_id), as_role("authenticated", bob_id)
    theirs = alice.enqueue("image", {"prompt": "alice's"}, owner_id=alice_id, idempotency_key="k")
    raw(
        bob,
        f"INSERT INTO {bob.table_name} (kind, payload, owner_id, idempotency_key) "
        "VALUES ('image', '{\"prompt\": \"bob\"}', :o, 'k')",
        o=bob_id,
    )
    (mine,) = visible(bob)
    assert mine["idempotency_key"] == "k" and mine["payload"] == {"prompt": "bob"}
    # Through the library too; a key is still unique within one owner's jobs.
    assert bob.enqueue("image", {}, owner_id=bob_id, idempotency_key="k2").owner_id == bob_id
    with pytest.raises(sa_exc.IntegrityError, match="idempotency_idx"):
        raw(
            alice,
            f"INSERT INTO {alice.table_name} (kind, owner_id, idempotency_key) "
            "VALUES ('image', :o, 'k')",
            o=alice_id,
        )
    assert {j.id for j in admin.list() if j.owner_id == alice_id} == {theirs.id}
    assert len(admin.list()) == 3


def test_a_user_reads_only_the_owners_columns(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    alice_id, _ = users()
    alice = as_role("authenticated", alice_id)
    job = alice.enqueue("image", {"prompt": "x"}, owner_id=alice_id)
    worker = as_role("service_role")
    (held,) = worker.claim("gpu-host-7.internal")
    worker.save_remote_task_id(held, "provider-task-1")
    worker.fail(held, "OperationalError: connection to 10.0.0.5 refused", retry=False)
    (seen,) = visible(alice)
    assert seen["status"] == "failed" and seen["id"] == job.id
    hidden = ("locked_by", "lease_expires_at", "remote_task_id", "error", "errors")
    assert not set(hidden) & set(OWNER_COLUMNS)
    for column in (*hidden, "*"):
        with pytest.raises(sa_exc.DBAPIError, match="permission denied"):
            raw(alice, f"SELECT {column} FROM {alice.table_name}")
    assert admin.get(job.id).locked_by == "gpu-host-7.internal"


def _insert_as(user: JobQueue, owner: str, **columns: str) -> None:
    names = ", ".join(["kind", "owner_id", *columns])
    values = ", ".join(["'image'", ":owner", *columns.values()])
    raw(user, f"INSERT INTO {user.table_name} ({names}) VALUES ({values})", owner=owner)


def test_a_direct_insert_stays_within_the_librarys_limits(
    as_role: Callable[..., JobQueue], admin: JobQueue
) -> None:
    """What the worker could not read, or the library would refuse, is refused by the
    policy (or the table's constraints) when a user inserts it directly."""
    alice_id, _ = users()
    alice = as_role("authenticated", alice_id)
    limit = DEFAULT_MAX_PAYLOAD_BYTES
    depth = MAX_JSON_DEPTH
    refused = {
        "a payload over the size limit": {"payload": f"""'{{"p": "{"x" * limit}"}}'"""},
        # Small as stored (numeric), a megabyte of digits as the worker would read it.
        "numbers that print as a megabyte": {"payload": "'[" + ", ".join(["1e100000"] * 11) + "]'"},
        # Within the size limit, but an integer of more digits than the worker can read.
        "a number the worker cannot read": {"payload": "'[1e100000]'"},
        "a negative one deep inside": {"payload": """'{"a": [1, {"b": -1e4300}]}'"""},
        # The library takes MAX_JSON_DEPTH levels below the top one, and no more.
        "a payload nested too deep": {"payload": "'" + "[" * (depth + 2) + "]" * (depth + 2) + "'"},
        "run_at at infinity": {"run_at": "'infinity'"},
        "run_at beyond the longest delay": {"run_at": "now() + interval '367 days'"},
    }
    for what, columns in refused.items():
        try:
            _insert_as(alice, alice_id, **columns)
        except sa_exc.DBAPIError as exc:
            assert "row-level security" in str(exc), what
        else:
            pytest.fail(f"{what} was stored")
    with pytest.raises(sa_exc.IntegrityError, match="_key_check"):
        _insert_as(alice, alice_id, idempotency_key=f"'{'k' * 256}'")
    assert admin.list() == []
    accepted = {
        "payload": f"""'{{"p": "{"x" * (limit - 100)}"}}'""",
        "run_at": "now() + interval '365 days'",
    }
    _insert_as(alice, alice_id, **accepted)
    _insert_as(alice, alice_id, payload="'" + "[" * (depth + 1) + "]" * (depth + 1) + "'")
    _insert_as(alice, alice_id, idempotency_key=f"'{'k' * 255}'")
    _insert_as(alice, alice_id, payload="'[9.99e4299, -1e4299, 1.5]'")  # readable numbers
    assert len(admin.list()) == 4


def test_a_role_that_rls_keeps_from_the_version_table_is_not_told_to_migrate(
    postgres_url: str, rls_table: str
) -> None:
    """A role that may SELECT the version table but has no policy there sees no revision:
    that is a permission to give, not a missing schema ("run jobqueue migrate")."""
    role = f"jq_worker_{uuid.uuid4().hex[:8]}"
    owner = make_engine(postgres_url)
    with owner.begin() as conn:
        create_role(conn, role)
    engine = engine_as(postgres_url, role)
    try:
        apply_rls(postgres_url, table=rls_table)  # the read policy is service_role's only
        with owner.begin() as conn:
            conn.execute(text(f'GRANT SELECT ON "{rls_table}_alembic_version" TO "{role}"'))
        with pytest.raises(PermissionDenied, match="row-level security hides") as refused:
            schema_state(engine, table=rls_table)
        assert "migrate" not in str(refused.value).lower()
        assert schema_state(postgres_url, table=rls_table).up_to_date  # the owner sees it
    finally:
        engine.dispose()
        with owner.begin() as conn:
            conn.execute(text(f'DROP TABLE "{rls_table}", "{rls_table}_alembic_version"'))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        owner.dispose()


def test_a_worker_role_reads_the_version_table(postgres_url: str, rls_table: str) -> None:
    """`jobqueue check` run as the worker role learns the revision (a role without
    BYPASSRLS, as docs/supabase.md's dedicated worker role)."""
    role = f"jq_worker_{uuid.uuid4().hex[:8]}"
    owner = make_engine(postgres_url)
    with owner.begin() as conn:
        create_role(conn, role)
    engine = engine_as(postgres_url, role)
    try:
        apply_rls(postgres_url, table=rls_table, worker_role=role)
        state = schema_state(engine, table=rls_table)
        assert state.current == state.head
        with JobQueue(engine, table=rls_table) as worker:
            worker.enqueue("image", {})
            assert len(worker.claim("w")) == 1
    finally:
        engine.dispose()
        with owner.begin() as conn:
            conn.execute(text(f'DROP TABLE "{rls_table}", "{rls_table}_alembic_version"'))
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        owner.dispose()


def _psql(postgres_url: str, script: str, *, stop_on_error: bool = True) -> Any:
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    options = ["-v", "ON_ERROR_STOP=1"] if stop_on_error else []
    return subprocess.run(
        ["psql", dsn, "-q", *options], input=script, capture_output=True, text=True, check=False
    )


def _cli_sql(table: str, *args: str) -> str:
    done = subprocess.run(
        [JOBQUEUE, "--table", table, "sql", "--supabase", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_sql_supabase_can_be_pasted_again(
    postgres_url: str, table_name: str, as_role: Callable[..., JobQueue]
) -> None:
    """The whole script (migrations and RLS) twice through psql, then the same through one
    multi-statement execute as the Supabase SQL Editor sends it; and a database migrated
    to an older revision is brought up to date by it."""
    emulate_supabase(postgres_url)
    script = _cli_sql(table_name)
    for _ in range(2):
        done = _psql(postgres_url, script)
        assert done.returncode == 0 and "ERROR" not in done.stderr, done.stderr
    dsn = normalise_url(postgres_url, asynchronous=False).set(drivername="postgresql")
    with psycopg.connect(dsn.render_as_string(hide_password=False), autocommit=True) as pg:
        pg.execute(script.encode())
    assert schema_state(postgres_url, table=table_name).up_to_date
    older = f"{table_name}_old"
    migrate(postgres_url, table=older, revision="0002")
    done = _psql(postgres_url, _cli_sql(older))
    assert done.returncode == 0, done.stderr
    assert schema_state(postgres_url, table=older).up_to_date
    alice_id, _ = users()
    engine = engine_as(postgres_url, "authenticated", alice_id)
    try:
        alice = JobQueue(engine, table=table_name)
        job = alice.enqueue("image", {"prompt": "x"}, owner_id=alice_id)
        assert [j["id"] for j in visible(alice)] == [job.id]
    finally:
        engine.dispose()


def test_sql_supabase_with_a_missing_worker_role_changes_nothing(
    postgres_url: str, table_name: str
) -> None:
    emulate_supabase(postgres_url)
    missing = f"jq_missing_{uuid.uuid4().hex[:8]}"
    script = _cli_sql(table_name, "--worker-role", missing)
    # Pasted as is, psql goes on after an error: the transaction keeps anything from happening.
    done = _psql(postgres_url, script, stop_on_error=False)
    assert f"the role {missing} does not exist" in done.stderr
    assert "CREATE ROLE" in done.stderr and "nothing was changed" in done.stderr
    engine = make_engine(postgres_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(text("SELECT to_regclass(:t)"), {"t": table_name}).scalar()
    finally:
        engine.dispose()
    assert found is None
