"""The fast path (`jobqueue.drivers.direct`) is SQLAlchemy's own execution, only cheaper:
for every hot statement, on every driver that has it (psycopg sync and async, asyncpg), it
sends the same SQL, returns the same rows with the same types (None included), raises
errors that translate to the same errors of ours, and never hands a lost connection out
again.

Each statement runs once through SQLAlchemy (``Connection.execute``) and once through the
fast path, on two jobs tables holding the same rows (same ids), each on a connection in
autocommit mode as the queue's are. Only the times the statements take from the database
clock can differ between the two runs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import MetaData, make_url, text

from jobqueue import migrate
from jobqueue.drivers import direct
from jobqueue.drivers.engines import make_async_engine, make_engine
from jobqueue.drivers.errors import translate
from jobqueue.drivers.runner import rows_of
from jobqueue.errors import DatabaseUnavailable, PayloadError, PermissionDenied, SchemaNotInstalled
from jobqueue.sql.statements import Statements
from jobqueue.sql.steps import Direct, Rows
from jobqueue.sql.table import jobs_table
from jobqueue.testing import statement_as_sent
from tests.support.direct import WORKER, assert_same_rows, completions, held, new_row

pytestmark = pytest.mark.postgres

DRIVERS = ["psycopg (sync)", "psycopg", "asyncpg"]
NO_ROLE = "jobqueue_conformance_nobody"


@dataclass
class Side:
    """One jobs table, its statements, and a connection in autocommit mode to run them."""

    table: str
    s: Statements
    execute: Callable[[Any], Awaitable[Rows]]  # through SQLAlchemy
    fast: Callable[[Direct], Awaitable[Rows]]  # through the fast path
    sql: Callable[[str], Awaitable[Any]]  # plain SQL on the same connection
    invalidated: Callable[[], bool]


async def _sides(driver: str, url: str, tables: Sequence[str]) -> AsyncIterator[list[Side]]:
    sides = []
    if driver == "psycopg (sync)":
        engine = make_engine(url, isolation_level="AUTOCOMMIT")
        conns = [engine.connect() for _ in tables]
        for table, conn in zip(tables, conns, strict=True):

            async def execute(step: Any, conn: Any = conn) -> Rows:
                return rows_of(conn.execute(step.statement, step.params))

            async def fast(step: Direct, conn: Any = conn) -> Rows:
                return direct.run_direct(conn, step)

            async def sql(q: str, conn: Any = conn) -> Any:
                return conn.exec_driver_sql(q)

            sides.append(
                Side(
                    table,
                    _statements(table),
                    execute,
                    fast,
                    sql,
                    lambda conn=conn: bool(conn.invalidated),
                )
            )
        try:
            yield sides
        finally:
            for conn in conns:
                conn.close()
            engine.dispose()
        return
    name = "psycopg_async" if driver == "psycopg" else "asyncpg"
    u = make_url(url).set(drivername=f"postgresql+{name}")
    aengine = make_async_engine(u, isolation_level="AUTOCOMMIT")
    aconns = [await aengine.connect() for _ in tables]
    for table, aconn in zip(tables, aconns, strict=True):

        async def aexecute(step: Any, conn: Any = aconn) -> Rows:
            return rows_of(await conn.execute(step.statement, step.params))

        async def afast(step: Direct, conn: Any = aconn) -> Rows:
            return await direct.run_direct_async(conn, step)

        async def asql(q: str, conn: Any = aconn) -> Any:
            return await conn.exec_driver_sql(q)

        sides.append(
            Side(
                table,
                _statements(table),
                aexecute,
                afast,
                asql,
                lambda conn=aconn: bool(conn.invalidated),
            )
        )
    try:
        yield sides
    finally:
        for aconn in aconns:
            await aconn.close()
        await aengine.dispose()


def _statements(table: str) -> Statements:
    return Statements(jobs_table(table, None, MetaData()), "postgresql")


@pytest.fixture(params=DRIVERS)
async def pair(
    request: pytest.FixtureRequest, postgres_url: str, table_name: str
) -> AsyncIterator[tuple[Side, Side]]:
    """Two tables with the same jobs: ``sa`` runs statements through SQLAlchemy, ``fast``
    through the fast path."""
    tables = [f"{table_name}_sa", f"{table_name}_fast"]
    for table in tables:
        migrate(postgres_url, table=table)
    _fill(postgres_url, tables)
    gen = _sides(request.param, postgres_url, tables)
    sides = await gen.__anext__()
    for side in sides:
        # Times come back in the session's zone: only the type processing makes them UTC.
        await side.sql("SET TIME ZONE 'Asia/Kolkata'")
    yield sides[0], sides[1]
    await gen.aclose()


def _fill(url: str, tables: Sequence[str]) -> None:
    """The same jobs in each table: varied priorities, owners, keys and payloads, all due
    and in the line, in an order of turns other than their ids'."""
    engine = make_engine(url)
    jobs = [
        {
            "id": uuid.UUID(int=i + 1),
            "priority": i % 3,
            "owner": None if i % 2 else f"owner-{i}",
            "key": None if i % 4 else f"key-{i}",
            "turn": float(i * 7 % 12),
            "payload": f'{{"n": {i}, "prompt": "ein Bär", "big": {2**70}, "none": null}}',
        }
        for i in range(12)
    ]
    try:
        with engine.begin() as conn:
            for table in tables:
                for job in jobs:
                    conn.execute(
                        text(
                            f'INSERT INTO "{table}" (id, priority, owner_id, idempotency_key, '
                            "turn, payload, run_at, created_at) VALUES (:id, :priority, :owner, "
                            ":key, :turn, CAST(:payload AS jsonb), now() - interval '1 hour', "
                            "now() - interval '1 hour')"
                        ),
                        job,
                    )
    finally:
        engine.dispose()


async def both(pair: tuple[Side, Side], build: Callable[[Side], Direct]) -> tuple[Rows, Rows]:
    """Run the statement ``build`` makes for each table, each through its own path."""
    sa, fast = pair
    sa_step, fast_step = build(sa), build(fast)
    assert isinstance(sa_step, Direct) and isinstance(fast_step, Direct)
    rows_sa = await sa.execute(sa_step)
    rows_fast = await fast.fast(fast_step)
    assert_same_rows(rows_sa, rows_fast)
    return rows_sa, rows_fast


async def test_one_job_insert(pair: tuple[Side, Side]) -> None:
    await both(pair, lambda side: side.s.insert_many([new_row()]))
    at = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    await both(
        pair,
        lambda side: side.s.insert_many(
            [
                new_row(
                    id=uuid.UUID(int=1001),
                    run_at_value=at,
                    owner_id="o",
                    idempotency_key="k",
                    limit_key="api",
                )
            ]
        ),
    )
    # The key again: nothing inserted, no rows, on both paths.
    rows, _ = await both(
        pair,
        lambda side: side.s.insert_many(
            [new_row(id=uuid.UUID(int=1002), owner_id="o", idempotency_key="k")]
        ),
    )
    assert rows == []


async def test_claims_heartbeats_and_completions(pair: tuple[Side, Side]) -> None:
    def claim(limit: int) -> Callable[[Side], Direct]:
        return lambda side: side.s.claim(
            WORKER, limit=limit, lease=60.0, queues=("default",), kinds=None
        )

    one, one_fast = await both(pair, claim(1))
    many, many_fast = await both(pair, claim(5))
    assert len(one) == 1 and len(many) == 5

    def mine(side: Side, rows: Rows, rows_fast: Rows) -> Rows:
        """The rows of ``side``'s own run (each table's claims started at its own time)."""
        return rows if side is pair[0] else rows_fast

    beats, _ = await both(
        pair,
        lambda side: side.s.heartbeat_many(
            WORKER, held(mine(side, one, one_fast)) + held(mine(side, many, many_fast)), 30.0
        ),
    )
    assert len(beats) == 6
    written, _ = await both(
        pair,
        lambda side: side.s.complete_many(completions(mine(side, one, one_fast))),
    )
    assert len(written) == 1

    def complete_and_claim(rows: Rows, rows_fast: Rows, limit: int) -> Callable[[Side], Direct]:
        def build(side: Side) -> Direct:
            step = side.s.complete_and_claim(
                completions(mine(side, rows, rows_fast)),
                WORKER,
                limit=limit,
                lease=60.0,
                queues=("default",),
                kinds=None,
            )
            assert step is not None
            return step

        return build

    got, got_fast = await both(pair, complete_and_claim(many, many_fast, 5))
    assert len([r for r in got if r["id"] is not None]) == 5
    # Nothing left to claim: one row of NULLs carrying the ids written.
    rest, rest_fast = await both(pair, complete_and_claim(got, got_fast, 50))
    await both(pair, complete_and_claim(rest, rest_fast, 50))
    last, _ = await both(pair, complete_and_claim([], [], 5))
    assert [r["id"] for r in last] == [None]


async def test_the_same_sql_and_parameters_are_sent(postgres_url: str) -> None:
    """What the fast path sends is what SQLAlchemy sends for the same statement."""
    migrate(postgres_url, table="jobs_sent")
    s = _statements("jobs_sent")
    engine = make_engine(postgres_url)
    started = datetime.now(UTC)
    batch = [
        {
            "id": uuid.uuid4(),
            "attempt": 1,
            "started": started,
            "result": "{}",
            "result_url": None,
            "cost": None,
            "cost_unit": None,
        }
    ]
    steps = [
        s.insert_many([new_row()]),
        s.claim(WORKER, limit=3, lease=30.0, queues=("a", "b"), kinds=("image",)),
        s.heartbeat_many(WORKER, [(uuid.uuid4(), 1, started)], 30.0),
        s.complete_many(batch),
        s.complete_and_claim(batch, WORKER, limit=3, lease=30.0, queues=None, kinds=None),
    ]
    try:
        for step in steps:
            assert isinstance(step, Direct)
            assert direct.sent(step, engine.dialect) == statement_as_sent(
                engine, step.statement, step.params
            )
    finally:
        engine.dispose()


async def test_psycopg_receives_what_its_own_conversion_sends(postgres_url: str) -> None:
    """On psycopg the fast path sends a hot statement with ``$n`` placeholders made once
    (`direct.native_sql`) through a raw cursor: the query text, parameter values, types
    and formats psycopg passes to libpq are those its own conversion of the named form
    (what SQLAlchemy sends) gives."""
    from psycopg._queries import PostgresQuery, PostgresRawQuery
    from psycopg.adapt import Transformer

    s = _statements("jobs_native")
    engine = make_engine(postgres_url)
    started = datetime.now(UTC)
    batch = [
        {
            "id": uuid.uuid4(),
            "attempt": 1,
            "started": started,
            "result": "{}",
            "result_url": None,
            "cost": None,
            "cost_unit": None,
        },
        {
            "id": uuid.uuid4(),
            "attempt": 2,
            "started": started,
            "result": None,
            "result_url": "u",
            "cost": Decimal("0.040001"),
            "cost_unit": "USD",
        },
    ]
    steps = [
        s.insert_many([new_row()]),
        s.claim(WORKER, limit=3, lease=30.0, queues=("a", "b"), kinds=("image",)),
        s.heartbeat_many(WORKER, [(uuid.uuid4(), 1, started)], 30.0),
        s.complete_many(batch),
        s.complete_and_claim(batch, WORKER, limit=3, lease=30.0, queues=("a",), kinds=None),
        s.complete_and_claim(batch, WORKER, limit=3, lease=30.0, queues=None, kinds=None),
    ]
    try:
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            for step in steps:
                assert isinstance(step, Direct)
                c = direct._compile(step, engine.dialect)
                assert c.native is not None
                sql, params = direct.sent(step, engine.dialect)
                named = PostgresQuery(Transformer(raw))
                named.convert(sql, params)
                native = PostgresRawQuery(Transformer(raw))
                native.convert(c.native[0], c.native_params(step.params))
                assert native.query == named.query
                assert native.params == named.params
                assert native.types == named.types
                assert native.formats == named.formats
    finally:
        engine.dispose()


def test_native_sql_numbers_each_name_once() -> None:
    sql, order = direct.native_sql("SELECT %(a)s, %(b)s::int, %(a)s, 'x%%y' || %(c)s")
    assert sql == "SELECT $1, $2::int, $1, 'x%y' || $3"
    assert order == ("a", "b", "c")


async def test_errors_translate_to_the_same_errors(pair: tuple[Side, Side]) -> None:
    sa, fast = pair

    async def errors(build: Callable[[Side], Direct]) -> tuple[Any, Any]:
        caught = []
        for side, run in ((sa, sa.execute), (fast, fast.fast)):
            with pytest.raises(Exception) as info:
                await run(build(side))  # type: ignore[operator]
            caught.append(translate(info.value, table=side.table))
        return caught[0], caught[1]

    # A value outside the table's bounds (the library would refuse it before the write).
    out_of_bounds = await errors(lambda side: side.s.insert_many([new_row(priority=10**7)]))
    assert [type(e) for e in out_of_bounds] == [PayloadError, PayloadError]

    # A table that is not there.
    missing = await errors(
        lambda side: _statements(side.table + "_gone").claim(
            WORKER, limit=1, lease=1.0, queues=None, kinds=None
        )
    )
    assert [type(e) for e in missing] == [SchemaNotInstalled, SchemaNotInstalled]

    # A role that may not touch the table.
    await sa.sql(
        f"DO $$ BEGIN IF to_regrole('{NO_ROLE}') IS NULL THEN CREATE ROLE {NO_ROLE}; END IF; END $$"
    )
    for side in pair:
        await side.sql(f"SET ROLE {NO_ROLE}")
    try:
        refused = await errors(
            lambda side: side.s.claim(WORKER, limit=1, lease=1.0, queues=None, kinds=None)
        )
    finally:
        for side in pair:
            await side.sql("RESET ROLE")
    assert [type(e) for e in refused] == [PermissionDenied, PermissionDenied]
    for a, b in (out_of_bounds, missing, refused):
        assert a.message.replace(sa.table, "T") == b.message.replace(fast.table, "T")


async def test_a_lost_connection_is_invalidated(pair: tuple[Side, Side], postgres_url: str) -> None:
    """The server ends the connection: the statement fails with `DatabaseUnavailable`, and
    the connection is invalidated (its pool will not hand it out again), on both paths."""
    sa, fast = pair
    admin = make_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        for side, run in ((sa, sa.execute), (fast, fast.fast)):
            pid = (await side.sql("SELECT pg_backend_pid()")).scalar_one()
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            step = side.s.claim(WORKER, limit=1, lease=1.0, queues=None, kinds=None)
            with pytest.raises(Exception) as info:
                await run(step)  # type: ignore[operator]
            assert isinstance(translate(info.value, table=side.table), DatabaseUnavailable)
            assert side.invalidated()
    finally:
        admin.dispose()
