"""The plans PostgreSQL picks for the hot statements, on a table with many pending and many
finished rows: the claim must come from the partial claim index (finished rows never enter
it) and listing a user's jobs from the owner index, never from a scan of the whole table.

EXPLAIN runs on exactly the SQL and parameters the driver receives: for a hot statement,
what the fast path sends (`jobqueue.drivers.direct.sent`); for any other, what SQLAlchemy
sends (captured while the statement runs once inside a transaction that is rolled back).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

from jobqueue import JobQueue, migrate
from jobqueue.drivers import direct
from jobqueue.sql.steps import Direct, Query
from jobqueue.testing import statement_as_sent

pytestmark = pytest.mark.postgres

PENDING = 10_000
FINISHED = 10_000
OWNERS = 200


@pytest.fixture
def busy_queue(postgres_url: str, table_name: str) -> Iterator[JobQueue]:
    """A jobs table holding PENDING due jobs and FINISHED completed ones, analysed."""
    migrate(postgres_url, table=table_name)
    q = JobQueue(postgres_url, table=table_name)
    with q.engine.begin() as conn:
        for status, count in (("completed", FINISHED), ("pending", PENDING)):
            conn.execute(
                text(
                    f'INSERT INTO "{table_name}" (payload, status, owner_id, completed_at)'
                    f" SELECT jsonb_build_object('n', g), '{status}', 'user-' || (g % :owners),"
                    f" {'clock_timestamp()' if status == 'completed' else 'NULL'}"
                    " FROM generate_series(1, :count) AS g"
                ),
                {"owners": OWNERS, "count": count},
            )
        conn.execute(text(f'ANALYZE "{table_name}"'))
    yield q
    q.close()


def plan_of(engine: Engine, step: Query) -> dict[str, Any]:
    """EXPLAIN (FORMAT JSON) of the statement exactly as the driver receives it, run on
    the driver connection itself."""
    if isinstance(step, Direct):
        sql, parameters = direct.sent(step, engine.dialect)
    else:
        sql, parameters = statement_as_sent(engine, step.statement, step.params)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        (doc,) = raw.execute("EXPLAIN (FORMAT JSON) " + sql, parameters).fetchone()
    plan: dict[str, Any] = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    return plan


def scans(node: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """Every scan in the plan as (node type, table, index)."""
    found = []
    if "Scan" in node.get("Node Type", ""):
        found.append((node["Node Type"], node.get("Relation Name"), node.get("Index Name")))
    for child in node.get("Plans", []):
        found.extend(scans(child))
    return found


def test_claim_takes_pending_jobs_from_the_claim_index(busy_queue: JobQueue) -> None:
    table = busy_queue.table.name
    step = busy_queue.statements.claim(
        "explainer", limit=10, lease=30.0, queues=["default"], kinds=None
    )
    assert isinstance(step, Direct)  # the fast path's SQL is the one explained
    found = scans(plan_of(busy_queue.engine, step))
    assert any(
        kind in ("Index Scan", "Index Only Scan") and index == f"{table}_claim_idx"
        for kind, _, index in found
    ), found
    assert not any(kind == "Seq Scan" and rel == table for kind, rel, _ in found), found


def test_listing_a_users_jobs_uses_the_owner_index(busy_queue: JobQueue) -> None:
    table = busy_queue.table.name
    step = busy_queue.statements.list(
        owner_id="user-7", statuses=None, queue=None, kind=None, since=None, limit=50
    )
    found = scans(plan_of(busy_queue.engine, step))
    assert any(index == f"{table}_owner_idx" for _, _, index in found), found
    assert not any(kind == "Seq Scan" and rel == table for kind, rel, _ in found), found
