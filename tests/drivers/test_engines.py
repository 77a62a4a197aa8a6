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


@pytest.mark.postgres
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_postgres_connections_get_tcp_defaults_the_url_overrides(
    postgres_url: str, driver: str
) -> None:
    """`PG_CONNECT_DEFAULTS` reach every connection (keepalives, ``tcp_user_timeout``, the
    connect timeout), as libpq parameters on psycopg and as socket options on asyncpg;
    a value in the URL wins."""
    import socket

    from jobqueue.drivers.engines import PG_CONNECT_DEFAULTS, make_async_engine, make_engine

    url = postgres_url.replace("postgresql://", f"postgresql+{driver}://", 1)
    if driver == "psycopg":
        engine = make_engine(url + "?keepalives_idle=61")
        try:
            with engine.connect() as conn:
                info = conn.connection.driver_connection.info  # type: ignore[union-attr]
                params = info.get_parameters()
                got = {k: params.get(k) for k in PG_CONNECT_DEFAULTS}
        finally:
            engine.dispose()
        assert got == {
            "connect_timeout": "10",
            "keepalives": "1",
            "keepalives_idle": "61",  # the URL's
            "keepalives_interval": "10",
            "keepalives_count": "3",
            "tcp_user_timeout": "30000",
        }
        return
    aengine = make_async_engine(url)
    try:
        async with aengine.connect() as aconn:
            raw = (await aconn.get_raw_connection()).driver_connection
            sock = raw._transport.get_extra_info("socket")  # type: ignore[union-attr]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
    finally:
        await aengine.dispose()


@pytest.mark.postgres
def test_a_pool_with_no_connection_free_in_time_is_a_database_timeout(
    postgres_url: str, table_name: str
) -> None:
    """Callers queued behind a full pool (every connection waiting on a silent network)
    get `DatabaseTimeout` after ``pool_timeout``, which the web API answers with a 503."""
    from jobqueue import JobQueue, migrate
    from jobqueue.drivers.engines import make_engine
    from jobqueue.errors import DatabaseTimeout

    migrate(postgres_url, table=table_name)
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    queue = JobQueue(engine, table=table_name)
    try:
        with engine.connect(), pytest.raises(DatabaseTimeout, match="no database connection"):
            queue.enqueue("work", {})
    finally:
        engine.dispose()


async def test_psycopg_sessions_read_times_in_utc(postgres_url: str) -> None:
    """The queue's psycopg sessions start in the UTC zone (psycopg's compiled time loader
    takes its quick path only there); a zone the caller's options name is kept, none is
    set behind a transaction-mode pooler (it would refuse the startup option)."""
    from jobqueue.drivers.engines import make_async_engine, make_engine

    def zone(url: str) -> str:
        """The session's zone, and who set it (``client``: the connection's options)."""
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                row = conn.exec_driver_sql(
                    "SELECT setting, source FROM pg_settings WHERE name = 'TimeZone'"
                ).one()
                return f"{row[0]} ({row[1]})"
        finally:
            engine.dispose()

    assert zone(postgres_url) == "UTC (client)"
    berlin = "options=-c%20TimeZone%3DEurope/Berlin"
    assert zone(f"{postgres_url}?{berlin}") == "Europe/Berlin (client)"
    assert not zone(f"{postgres_url}?prepare_threshold=none").endswith("(client)")

    engine = make_async_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("SHOW TimeZone")).scalar() == "UTC"
    finally:
        await engine.dispose()
