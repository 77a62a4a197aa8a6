"""The engines jobqueue makes (`jobqueue.drivers.engines`): SQLite transactions that let
readers through while a writer holds the lock, and errors that carry no user data."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.exc import DBAPIError

from jobqueue import Status
from tests.conftest import Either


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sqlite_reads_do_not_wait_for_the_write_lock(q: Either, db_url: str) -> None:
    """get, list, stats and wait begin deferred on SQLite, so a writer holding the lock
    (another process mid-transaction) does not hold up readers; writes still take the lock
    up front."""
    job = await q.enqueue("image", {})
    await q.cancel(job)
    writer = sqlite3.connect(make_url(db_url).database or "", isolation_level=None, timeout=60)
    try:
        writer.execute("BEGIN IMMEDIATE")
        assert (await q.get(job.id)).status is Status.CANCELLED
        assert [j.id for j in await q.list()] == [job.id]
        assert [s.status for s in await q.stats()] == [Status.CANCELLED]
        assert (await q.wait(job.id, timeout=1)).id == job.id
    finally:
        writer.execute("ROLLBACK")
        writer.close()


async def test_driver_errors_do_not_carry_statement_parameters(q: Either) -> None:
    """An untranslated SQLAlchemy error would list the statement's parameters (payloads,
    results: user data) unless the engine hides them."""
    secret = "user-secret-prompt-4711"
    engine = q.target.engine
    with pytest.raises(DBAPIError) as caught:
        if q.is_async:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT no_such_column WHERE 1 = :x"), {"x": secret})
        else:
            with engine.connect() as conn:
                conn.execute(text("SELECT no_such_column WHERE 1 = :x"), {"x": secret})
    assert "no_such_column" in str(caught.value)
    assert secret not in str(caught.value)
