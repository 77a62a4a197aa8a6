"""Statements compile for both dialects with the dialect differences where we expect them."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite

from jobqueue import Completion, NewJob, jobs_table
from jobqueue.sql.statements import Statements
from jobqueue.sql.steps import Query
from jobqueue.validation import QueueLimits

DIALECTS = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}


def compiled(stmt: object, dialect: str) -> str:
    if isinstance(stmt, Query):
        stmt = stmt.statement
    return str(stmt.compile(dialect=DIALECTS[dialect]))  # type: ignore[attr-defined]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_claim_locks_without_waiting_only_on_postgres(dialect: str) -> None:
    s = Statements(jobs_table(), dialect)
    sql = compiled(s.claim("w", limit=5, lease=30, queues=["default"], kinds=None), dialect)
    # Both sources (pending jobs, expired leases) lock their rows without waiting.
    assert sql.count("FOR UPDATE SKIP LOCKED") == (2 if dialect == "postgresql" else 0)
    # The fair-share line: by priority, then turn; only jobs that have entered it.
    assert "ORDER BY generation_jobs.priority DESC, generation_jobs.turn, generation_jobs.id" in sql
    assert "generation_jobs.turn IS NOT NULL" in sql
    # The one-statement claim stands aside while a limit is in force (`claim_within_limits`).
    assert sql.count("NOT (EXISTS (SELECT") == 2
    assert "FROM generation_jobs_limits" in sql
    assert "RETURNING" in sql
    now = "statement_timestamp()" if dialect == "postgresql" else "strftime("
    assert now in sql  # database clock, never the worker's


@pytest.mark.parametrize("dialect", DIALECTS)
def test_fenced_writes_carry_id_attempt_and_status(dialect: str) -> None:
    s = Statements(jobs_table(), dialect)
    jid = uuid.uuid4()
    started = datetime.now(UTC)
    for stmt in (
        s.complete(jid, 2, started, None, None),
        s.fail(jid, 2, started, "e", None),
        s.fail(jid, 2, started, "e", 5.0),
        s.heartbeat(jid, 2, started, 30),
        s.set_progress(jid, 2, started, 5, None),
        s.save_remote_task_id(jid, 2, started, "t"),
        s.release(jid, 2, started, "r"),
    ):
        sql = compiled(stmt, dialect)
        where = sql.split("WHERE", 1)[1]
        for column in (
            "generation_jobs.id =",
            "generation_jobs.attempts =",
            "generation_jobs.started_at =",
            "generation_jobs.status =",
        ):
            assert column in where


@pytest.mark.parametrize("dialect", DIALECTS)
def test_batched_completion_is_one_statement_with_the_same_fence(dialect: str) -> None:
    from jobqueue.models import Job, Status
    from jobqueue.operations import complete_many
    from jobqueue.validation import QueueLimits

    s = Statements(jobs_table(), dialect)
    job = Job.from_row(
        {c.name: None for c in jobs_table().c}
        | {"id": uuid.uuid4(), "status": Status.PROCESSING, "attempts": 1, "errors": []}
    )
    op = complete_many(s, [Completion(job, {"a": 1}, "u")] * 3, QueueLimits())
    sql = compiled(next(op.steps), dialect)
    assert sql.count("UPDATE") == 1
    assert "generation_jobs.attempts = batch.attempt" in sql
    assert "generation_jobs.started_at = batch.started" in sql
    assert "generation_jobs.status =" in sql


def test_hostile_table_names_never_reach_sql() -> None:
    from jobqueue import ConfigurationError

    for name in ('jobs"; DROP TABLE users; --', "1jobs", "jobs-x", "j" * 64, "", "jobs\x00"):
        with pytest.raises(ConfigurationError):
            jobs_table(name)
    with pytest.raises(ConfigurationError):
        jobs_table("jobs", schema="public; DROP SCHEMA x")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_one_job_without_an_idempotency_key_is_a_plain_insert(dialect: str) -> None:
    """Only a job with a key can meet an existing row: one without is inserted without
    ON CONFLICT (no conflict check, no extra WAL record)."""
    s = Statements(jobs_table(), dialect)
    bounds = QueueLimits()
    plain = compiled(s.insert_many([NewJob().to_row(bounds)]), dialect)
    keyed = compiled(s.insert_many([NewJob(idempotency_key="click-1").to_row(bounds)]), dialect)
    assert "ON CONFLICT" not in plain
    assert "ON CONFLICT" in keyed and "DO NOTHING" in keyed


@pytest.mark.postgres
@pytest.mark.parametrize(
    "started",
    [
        datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC),  # no fraction: isoformat leaves it out
        datetime(2026, 1, 1, 12, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 14, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_a_completion_batch_fences_to_the_microsecond(
    postgres_url: str, table_name: str, started: datetime
) -> None:
    """On PostgreSQL a batch travels as JSON text (`completion_batch`): a claim's start
    time reads back as exactly that instant, so the fence matches it and nothing a
    microsecond away."""
    from jobqueue import JobQueue, migrate
    from jobqueue.operations import complete_many

    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        job = q.enqueue("image", {"n": 1})
        with q.engine.begin() as conn:
            conn.execute(
                text(
                    f"UPDATE \"{table_name}\" SET status = 'processing', attempts = 1, "
                    "started_at = :started WHERE id = :id"
                ),
                {"started": started, "id": job.id},
            )
        held = q.get(job.id)
        assert held.started_at == started
        off = dataclasses.replace(held, started_at=started + timedelta(microseconds=1))
        assert q._run(complete_many(q.statements, [Completion(off)], q.limits)) == set()
        assert q._run(complete_many(q.statements, [Completion(held)], q.limits)) == {job.id}
        assert q.get(job.id).status.value == "completed"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_only_a_claim_asked_not_to_be_durable_skips_the_wait_for_the_disk(dialect: str) -> None:
    """``durable=False`` on a claim: PostgreSQL's commit of it does not wait for the flush
    (a local ``synchronous_commit = off``). Every other write keeps the server's setting:
    a completion, a heartbeat (which confirms a lease before a paid request), a claim
    with completions, a claim asked for by default."""
    s = Statements(jobs_table(), dialect)
    jid, started = uuid.uuid4(), datetime.now(UTC)
    unflushed = compiled(
        s.claim("w", limit=5, lease=30, queues=["default"], kinds=None, durable=False), dialect
    )
    marker = "set_config('synchronous_commit', 'off', true)"
    assert (marker in unflushed) == (dialect == "postgresql")
    for stmt in (
        s.claim("w", limit=5, lease=30, queues=["default"], kinds=None),
        s.complete(jid, 2, started, None, None),
        s.heartbeat(jid, 2, started, 30),
        s.heartbeat_many("w", [(jid, 2, started)], 30),
        s.save_remote_task_id(jid, 2, started, "t"),
        s.complete_and_claim(
            [
                {
                    "id": jid,
                    "attempt": 2,
                    "started": started,
                    "result": None,
                    "result_url": None,
                    "cost": None,
                    "cost_unit": None,
                }
            ],
            "w",
            limit=5,
            lease=30,
            queues=["default"],
            kinds=None,
        ),
    ):
        if stmt is not None:  # complete_and_claim is PostgreSQL's alone
            assert "synchronous_commit" not in compiled(stmt, dialect)


@pytest.mark.postgres
def test_an_unflushed_claim_commits_and_leaves_the_session_as_it_was(
    postgres_url: str, table_name: str
) -> None:
    """The claim's ``synchronous_commit = off`` lasts only for its own transaction: the job
    is claimed for everyone to see, and the connection's next transaction waits for the
    disk again."""
    from jobqueue import JobQueue, migrate

    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        job = q.enqueue("image", {"n": 1})
        claim = q.statements.claim(
            "w1", limit=1, lease=30, queues=["default"], kinds=None, durable=False
        )
        with q.engine.connect() as conn:
            with conn.begin():
                rows = conn.execute(claim.statement, dict(claim.params)).mappings().all()
                assert [r["id"] for r in rows] == [job.id]
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
            with conn.begin():
                assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        held = q.get(job.id)
        assert (held.status.value, held.locked_by, held.attempts) == ("processing", "w1", 1)
        # The public claim takes the same keyword, on either queue.
        again = q.enqueue("image", {"n": 2})
        assert [j.id for j in q.claim("w2", durable=False)] == [again.id]
