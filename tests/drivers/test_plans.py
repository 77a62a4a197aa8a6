"""The worker's hot statements keep one generic plan on the server (`jobqueue.drivers.plans`):
psycopg prepares them, the session is switched to generic plans for them and back for any
other statement, and a connection always goes back to its pool in PostgreSQL's default mode.
Only on a connection a task keeps (`plans.keep`) of an engine this package made, and only
where psycopg prepares statements."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, MetaData, create_engine

from jobqueue import AsyncJobQueue, JobQueue, migrate
from jobqueue.drivers import direct, plans
from jobqueue.drivers.engines import make_async_engine, make_engine
from jobqueue.sql.statements import Statements
from jobqueue.sql.steps import Direct
from jobqueue.sql.table import jobs_table

pytestmark = pytest.mark.postgres

#: The claim's prepared statement on this connection, and how often it was planned.
PREPARED = (
    "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
    " WHERE strpos(statement, 'pending_jobs') > 0"
)


@pytest.fixture
def table(postgres_url: str, table_name: str) -> Iterator[str]:
    """A jobs table with 40 due jobs."""
    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        q.enqueue_many([{"payload": {"prompt": f"p{i}"}} for i in range(40)])
    yield table_name


def _statements(table: str) -> Statements:
    return Statements(jobs_table(table, None, MetaData()), "postgresql")


def _claim(s: Statements) -> Direct:
    return s.claim("plans", limit=1, lease=30.0, queues=["default"], kinds=None)


def _mode(conn: Connection) -> str:
    return str(conn.exec_driver_sql("SHOW plan_cache_mode").scalar_one())


def test_claims_keep_one_generic_plan_and_other_statements_do_not(
    postgres_url: str, table: str
) -> None:
    s = _statements(table)
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            plans.keep(conn)
            for _ in range(12):
                (row,) = direct.run_direct(conn, _claim(s))
                assert row["status"] == "processing"
            assert _mode(conn) == "force_generic_plan"
            prepared = conn.exec_driver_sql(PREPARED).all()
            # psycopg prepared the claim after a few runs; every run since used the one
            # generic plan: PostgreSQL did not plan each execution.
            assert prepared and all(g >= 1 and c == 0 for g, c in prepared), prepared
            # A hot statement without a checked generic plan runs in the default mode.
            held = [(row["id"], row["attempts"], row["started_at"])]
            direct.run_direct(conn, s.heartbeat_many("plans", held, 30.0))
            assert _mode(conn) == "auto"
            direct.run_direct(conn, _claim(s))
            assert _mode(conn) == "force_generic_plan"
        # Given back to the pool, the connection is set back before anyone else gets it.
        with engine.connect() as conn:
            assert _mode(conn) == "auto"
    finally:
        engine.dispose()


async def test_an_async_engine_sets_its_connections_back_too(postgres_url: str, table: str) -> None:
    s = _statements(table)
    engine = make_async_engine(postgres_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            plans.keep(conn)
            await direct.run_direct_async(conn, _claim(s))
            mode = (await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar_one()
            assert mode == "force_generic_plan"
        async with engine.connect() as conn:
            mode = (await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar_one()
            assert mode == "auto"
    finally:
        await engine.dispose()


@pytest.mark.parametrize("how", ["engine of the caller's", "prepare_threshold=none"])
def test_the_mode_is_left_alone_where_it_could_leak_or_buys_nothing(
    postgres_url: str, table: str, how: str
) -> None:
    """An engine the caller made has no hook to set its connections back; without
    prepared statements (a transaction-mode pooler) no plan is kept anyway. (A connection
    not kept by a task: see the next test.)"""
    s = _statements(table)
    engine: Any
    if how == "engine of the caller's":
        url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
        engine = create_engine(url, pool_size=1, max_overflow=0)
    else:
        engine = make_engine(f"{postgres_url}?prepare_threshold=none", pool_size=1)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            plans.keep(conn)
            for _ in range(6):
                direct.run_direct(conn, _claim(s))
            assert _mode(conn) == "auto"
    finally:
        engine.dispose()


def test_a_connection_given_back_in_a_transaction_is_set_back_for_good(
    postgres_url: str, table: str
) -> None:
    """The pool rolls a returned connection back after the reset, which would undo a
    setting made in the transaction: the reset ends it first and commits its own."""
    s = _statements(table)
    engine = make_engine(postgres_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            plans.keep(conn)
            direct.run_direct(conn, _claim(s))
            conn.execution_options(isolation_level="READ COMMITTED")
            assert _mode(conn) == "force_generic_plan"  # begins a transaction
        with engine.connect() as conn:
            assert _mode(conn) == "auto"
    finally:
        engine.dispose()


async def test_the_workers_claims_on_a_kept_connection_use_the_generic_plan(
    postgres_url: str, table: str
) -> None:
    """As the worker runs them: `AsyncJobQueue.claim` on the connection its claim loop
    keeps (`_holding`), through the queue's autocommit engine."""
    async with AsyncJobQueue(postgres_url, table=table) as q:
        held = q._holding(1)
        assert held is not None
        with q._on_held(held):
            for _ in range(8):
                assert len(await q.claim("plans", limit=1, durable=False)) == 1
        assert held.conn is not None
        mode = (await held.conn.exec_driver_sql("SHOW plan_cache_mode")).scalar_one()
        prepared = (await held.conn.exec_driver_sql(PREPARED)).all()
        await held.let_go()
    assert mode == "force_generic_plan"
    assert prepared and all(g >= 1 and c == 0 for g, c in prepared), prepared


async def test_a_call_on_a_connection_from_the_pool_leaves_the_mode_alone(
    postgres_url: str, table: str
) -> None:
    """An ordinary call (here `AsyncJobQueue.claim` outside a kept connection) may be
    cancelled at any point, its connection's return included: setting the mode back there
    would put a round trip where a cancellation drops the connection."""
    async with AsyncJobQueue(postgres_url, table=table) as q:
        for _ in range(8):
            assert len(await q.claim("plans", limit=1)) == 1
        async with q.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("SHOW plan_cache_mode")).scalar_one()
    assert mode == "auto"
