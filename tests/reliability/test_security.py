"""Hostile names and values, and secrets that must never show.

Table and schema names are the only parts of our SQL that cannot be bound parameters, so
they are validated before any SQL is built; every value is bound, so SQL metacharacters in
it are stored verbatim. Database passwords never appear in our errors or logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, inspect

from jobqueue import (
    AsyncJobQueue,
    ConfigurationError,
    DatabaseUnavailable,
    JobQueue,
    JobQueueError,
    Status,
    jobs_table,
    migrate,
)
from jobqueue import migrations as jq_migrations
from jobqueue.drivers.engines import describe_url
from jobqueue.errors import redact
from jobqueue.generators import DefAPIGenerator
from jobqueue.sql.rls import supabase_sql
from jobqueue.sql.table import TABLE_NAME_MAX_LENGTH, limits_table, workers_table
from jobqueue.worker import Worker
from tests.conftest import Either
from tests.support.fake_defapi import FakeDefAPI

HOSTILE_NAMES: list[Any] = [
    "jobs; drop table x",
    "jobs; DROP TABLE generation_jobs; --",
    '"quoted"',
    'jobs" --',
    "jobs'",
    "ünïcode",
    "jobs\u200b",  # zero-width space
    "jobs\n",
    "jobs\x00",
    "x" * 64,
    "",
    " jobs",
    "1jobs",
    "jobs-x",
    "public.jobs",
    "jobs/*x*/",
    123,
]


@pytest.fixture
def counted_engine(tmp_path: Any) -> tuple[Engine, list[str]]:
    """A SQLite engine that records every statement sent to it."""
    engine = create_engine(f"sqlite:///{tmp_path / 'names.db'}")
    sent: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    return engine, sent


@pytest.mark.parametrize("bad", HOSTILE_NAMES, ids=repr)
async def test_hostile_table_and_schema_names_are_refused_before_any_sql(
    bad: Any, counted_engine: tuple[Engine, list[str]]
) -> None:
    engine, sent = counted_engine
    attempts: list[Callable[[], object]] = [
        lambda: JobQueue(engine, table=bad),
        lambda: JobQueue(engine, schema=bad),
        lambda: migrate(engine, table=bad),
        lambda: migrate(engine, schema=bad),
        lambda: jq_migrations.sql(table=bad),
        lambda: jq_migrations.sql(schema=bad),
        lambda: jq_migrations.schema_state(engine, table=bad),
        lambda: jobs_table(bad),
        lambda: supabase_sql(bad),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigurationError):
            attempt()
    with pytest.raises(ConfigurationError):
        AsyncJobQueue("sqlite+aiosqlite://", table=bad)
    assert sent == []
    assert inspect(engine).get_table_names() == []
    engine.dispose()


def test_the_longest_allowed_table_name_migrates_on_postgres(postgres_url: str) -> None:
    """One character more would make ``<table>_alembic_version`` longer than PostgreSQL's 63
    characters (it failed half-way with a raw driver error before the limit existed)."""
    too_long = "t" * (TABLE_NAME_MAX_LENGTH + 1)
    for attempt in (
        lambda: migrate(postgres_url, table=too_long),
        lambda: JobQueue(postgres_url, table=too_long),
        lambda: supabase_sql(too_long),
    ):
        with pytest.raises(ConfigurationError, match="longer than"):
            attempt()
    name = "t" * TABLE_NAME_MAX_LENGTH
    migrate(postgres_url, table=name)
    with JobQueue(postgres_url, table=name) as q:
        job = q.enqueue("image", {"ok": True}, idempotency_key="k")
        assert q.get(job.id).payload == {"ok": True}
        # The limits table and its constraints (named after the jobs table) work too.
        q.set_limit("image", max_running=1, max_running_per_owner=1, rate=5, per=1)
        assert [j.id for j in q.claim("w", limit=2)] == [job.id]
    # Every name the schema module declares is in the catalog as it is: none was cut to 63.
    declared = {
        str(item.name)
        for table in (jobs_table(name), limits_table(name), workers_table(name))
        for item in (*table.constraints, *table.indexes)
        if item.name is not None
    }
    assert max(len(n) for n in declared) <= 63
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            found = set(
                conn.exec_driver_sql(
                    "SELECT conname FROM pg_constraint UNION SELECT indexname FROM pg_indexes"
                ).scalars()
            )
    finally:
        engine.dispose()
    assert declared - found == set()


NASTY = "'); DROP TABLE generation_jobs; -- \" \\ $$ $x$ %s %(x)s :name ? ` /* */ \u2028"


async def test_values_with_sql_metacharacters_are_stored_verbatim(
    q: Either, raw_sql: Callable[..., list[Any]]
) -> None:
    payload = {NASTY: [NASTY, {"k": NASTY}], "prompt": NASTY}
    job = await q.enqueue(
        "image" + NASTY[:20],
        payload,
        queue="q" + NASTY[:30],
        owner_id=NASTY,
        idempotency_key=NASTY,
    )
    again = await q.enqueue(
        "image", {}, queue="q" + NASTY[:30], owner_id=NASTY, idempotency_key=NASTY
    )
    assert again.id == job.id
    got = await q.get(job.id)
    assert got.payload == payload and got.owner_id == NASTY
    assert got.kind == "image" + NASTY[:20] and got.queue == "q" + NASTY[:30]
    assert [j.id for j in await q.list(owner_id=NASTY)] == [job.id]
    assert await q.list(owner_id="x' OR '1'='1") == []

    (held,) = await q.claim(NASTY[:50], queues=["q" + NASTY[:30]])
    await q.set_progress(held, 40, NASTY)
    await q.save_remote_task_id(held, NASTY)
    failed = await q.fail(held, NASTY, retry_in=0)
    assert failed.error == NASTY and failed.errors[-1]["error"] == NASTY
    (held,) = await q.claim("w", queues=["q" + NASTY[:30]])
    done = await q.complete(held, {"text": NASTY}, result_url="https://x/" + NASTY)
    assert done.status is Status.COMPLETED
    assert done.result == {"text": NASTY} and done.result_url == "https://x/" + NASTY
    assert done.remote_task_id == NASTY and done.locked_by == "w"
    # The table is still there, with exactly our one row.
    assert raw_sql(f"SELECT count(*) FROM {q.table_name}") == [(1,)]


SECRET = "s3cretPa55"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://postgres:{SECRET}@127.0.0.1:1/x",
        f"postgresql://postgres@127.0.0.1:1/x?password={SECRET}",
        f"postgresql://u:p@{SECRET}@127.0.0.1:1/x",
        f"postgresql://u:{SECRET}@127.0.0.1:notaport/x",
        f"postgresql://nobody_{SECRET[:3]}:{SECRET}@127.0.0.1:5432/postgres",
    ],
    ids=["password", "query-password", "at-sign", "bad-port", "unknown-role"],
)
async def test_database_passwords_never_appear_in_errors_or_logs(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    failures: list[BaseException] = []
    for attempt in (
        lambda: JobQueue(url).get("0190c1d2-7b3a-7c1e-9a4b-2f1e3d4c5b6a"),
        lambda: JobQueue(url).enqueue("image", {}),
        lambda: migrate(url),
        lambda: jq_migrations.schema_state(url),
    ):
        with pytest.raises((DatabaseUnavailable, ConfigurationError)) as info:
            attempt()
        failures.append(info.value)
    with pytest.raises((DatabaseUnavailable, ConfigurationError)) as info:
        async with AsyncJobQueue(url) as aq:
            await aq.stats()
    failures.append(info.value)
    for exc in failures:
        assert isinstance(exc, JobQueueError)
        shown = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)
        assert SECRET not in shown, shown
    assert SECRET not in caplog.text
    assert SECRET not in describe_url(url) and SECRET not in redact(f"connecting to {url}")


async def test_a_failing_defapi_job_never_stores_the_key(
    migrated: tuple[str, str], fake_defapi: FakeDefAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that echoes the key (in a 401, in a failure reason) must not get it stored:
    not in ``error``, not in the ``errors`` history, not in the logs."""
    caplog.set_level(logging.DEBUG)
    url, table = migrated
    key = fake_defapi.api_key
    wrong_key = "sk-wrong-" + key[-12:] + "0000"
    fake_defapi.scenario("echo", fail_reason=f"quota exceeded for Bearer {key}")
    async with AsyncJobQueue(url, table=table, retry_backoff=(0.01, 0.02)) as aq:
        echoing = await aq.enqueue("image", {"prompt": "echo"}, max_attempts=2, queue="echo")
        refused = await aq.enqueue("image", {"prompt": "x"}, max_attempts=2, queue="wrong")
        settings = {
            "base_url": fake_defapi.url,
            "poll_interval": 0.02,
            "backoff": (0.01, 0.05),
            "request_timeout": 5.0,
            "timeout": 30.0,
        }
        for api_key, job in ((key, echoing), (wrong_key, refused)):
            generator = DefAPIGenerator(api_key, **settings)
            worker = Worker(aq, generator=generator, lease=10, queues=[job.queue])
            for _ in range(3):  # the retry of an attempt comes back after a short backoff
                await worker.run_until_idle()
                await asyncio.sleep(0.05)
            await generator.aclose()
            stored = await aq.get(job.id)
            assert stored.status is Status.FAILED, stored
            assert stored.error and stored.errors
            everything = json.dumps(stored.to_dict())
            assert api_key not in everything and key not in everything
    assert key not in caplog.text and wrong_key not in caplog.text
