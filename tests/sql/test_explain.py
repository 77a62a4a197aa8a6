"""The plans PostgreSQL picks for the hot statements, on a table with many pending and many
finished rows: the claim must come from the partial claim index (finished rows never enter
it) and listing a user's jobs from the owner index, never from a scan of the whole table.

EXPLAIN runs on exactly the SQL and parameters the driver receives: for a hot statement,
what the fast path sends (`jobqueue.drivers.direct.sent`); for any other, what SQLAlchemy
sends (captured while the statement runs once inside a transaction that is rolled back).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql as psycopg_sql
from sqlalchemy import Engine, text

from jobqueue import JobQueue, NewJob, migrate
from jobqueue.drivers import direct
from jobqueue.sql.limits import LINE_WINDOW
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


def generic_plan_of(engine: Engine, step: Direct) -> dict[str, Any]:
    """EXPLAIN of the plan PostgreSQL keeps for a prepared statement once it stops
    planning it for each execution's values (a generic plan), as psycopg prepares a hot
    statement after a few runs."""
    c = direct._compile(step, engine.dialect)
    assert c.native is not None
    sql, names = c.native
    params = c.params(step.params)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        raw.execute("SET plan_cache_mode = force_generic_plan")
        try:
            raw.execute(f"PREPARE jq_generic AS {sql}".encode(), prepare=False)
            values = ", ".join(psycopg_sql.Literal(params[name]).as_string(raw) for name in names)
            (doc,) = raw.execute(
                f"EXPLAIN (FORMAT JSON) EXECUTE jq_generic({values})".encode(), prepare=False
            ).fetchone()
        finally:
            raw.execute("DEALLOCATE ALL")
            raw.execute("RESET plan_cache_mode")
            raw.rollback()
    plan: dict[str, Any] = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    return plan


@pytest.fixture
def fresh_queue(postgres_url: str, table_name: str) -> Iterator[JobQueue]:
    """A jobs table just filled with 3,000 due jobs and not analysed yet: a small table's
    plans read it whole where they can, and the worker's first minutes run on such."""
    migrate(postgres_url, table=table_name)
    q = JobQueue(postgres_url, table=table_name)
    q.enqueue_many([{"payload": {"n": i}} for i in range(3_000)])
    yield q
    q.close()


@pytest.mark.parametrize("table", ["busy", "fresh"])
def test_the_workers_statements_have_generic_plans_on_the_indexes(
    request: pytest.FixtureRequest, table: str
) -> None:
    """The statements the driver layer runs with generic plans (``Direct.generic``: the
    claim, and a batch's completion alone or with the claim) read the claim and lease
    indexes and find rows by the primary key in that plan, never the whole table, on a
    large analysed table and a small fresh one alike."""
    q: JobQueue = request.getfixturevalue(f"{table}_queue")
    name = q.table.name
    started = q.claim("explainer", limit=2, queues=["default"])
    batch = [
        {
            "id": j.id,
            "attempt": j.attempts,
            "started": j.started_at,
            "result": None,
            "result_url": None,
            "cost": None,
            "cost_unit": None,
        }
        for j in started
    ]
    s = q.statements
    steps = {
        "claim": s.claim("explainer", limit=10, lease=30.0, queues=["default"], kinds=["image"]),
        "complete_many": s.complete_many(batch),
        "complete_and_claim": s.complete_and_claim(
            batch, "explainer", limit=10, lease=30.0, queues=["default"], kinds=["image"]
        ),
    }
    wanted = {
        "claim": {f"{name}_claim_idx", f"{name}_lease_idx", f"{name}_pkey"},
        "complete_many": {f"{name}_pkey"},
        "complete_and_claim": {f"{name}_claim_idx", f"{name}_lease_idx", f"{name}_pkey"},
    }
    for what, step in steps.items():
        assert isinstance(step, Direct) and step.generic, what
        found = scans(generic_plan_of(q.engine, step))
        # A bitmap index scan names its index but no table.
        indexes = {index for _, _, index in found if index is not None}
        assert wanted[what] <= indexes, (what, found)
        assert not any(kind == "Seq Scan" and rel == name for kind, rel, _ in found), (
            what,
            found,
        )


def test_listing_a_users_jobs_uses_the_owner_index(busy_queue: JobQueue) -> None:
    table = busy_queue.table.name
    step = busy_queue.statements.list(
        owner_id="user-7", statuses=None, queue=None, kind=None, since=None, limit=50
    )
    found = scans(plan_of(busy_queue.engine, step))
    assert any(index == f"{table}_owner_idx" for _, _, index in found), found
    assert not any(kind == "Seq Scan" and rel == table for kind, rel, _ in found), found


def test_the_admin_jobs_table_pages_by_the_creation_index(busy_queue: JobQueue) -> None:
    """A page of the dashboard's jobs table, the first or one deep in the table, reads
    the creation-time index from its keyset on: never the whole table."""
    table = busy_queue.table.name
    first = busy_queue.job_page(limit=50)
    assert first.after is not None
    deep = busy_queue.job_page(limit=100, after=first.after)
    for after in (None, deep.after):
        step = busy_queue.statements.page(
            statuses=None,
            queue=None,
            kind=None,
            owner_id=None,
            created_from=None,
            created_to=None,
            after=after,
            limit=51,
        )
        found = scans(plan_of(busy_queue.engine, step))
        assert any(index == f"{table}_created_idx" for _, _, index in found), found
        assert not any(kind == "Seq Scan" and rel == table for kind, rel, _ in found), found


# -- the fair-share line at scale ---------------------------------------------------------


class Line:
    """The sizes of a jobs table whose pending jobs stand in the fair-share line."""

    def __init__(self, in_line: int, owners: int) -> None:
        self.in_line = in_line  # pending jobs with a turn
        self.owners = owners
        self.waiting = max(1_000, in_line // 50)  # pending jobs outside the line
        self.running = max(100, in_line // 1_000)  # processing, lease not expired
        self.finished = max(1_000, in_line // 20)

    def __repr__(self) -> str:
        return f"{self.in_line}_in_line_{self.owners}_owners"


SMALL_LINE = Line(20_000, 200)
#: The size the scheduler is held to: a million pending jobs across ten thousand owners.
LARGE_LINE = Line(1_000_000, 10_000)


#: Owner o of the line's jobs; owner 0 stands for the jobs without an owner (they share
#: one turn, as one owner's jobs do).
OWNER = "CASE WHEN g % :owners = 0 THEN NULL ELSE 'user-' || (g % :owners) END"


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(SMALL_LINE, id="20k"),
        pytest.param(LARGE_LINE, id="1M", marks=pytest.mark.soak),
    ],
)
def line_queue(request: pytest.FixtureRequest, jobqueue_postgres_url: str) -> Iterator[JobQueue]:
    """A jobs table as a queue's own enqueues leave it: ``in_line`` pending jobs spread
    evenly over ``owners`` (one of them the jobs without an owner), owner o's k-th job
    with turn k - 1 (the line interleaves the owners); besides, jobs waiting outside the
    line (half of them due: retries whose backoff is over; half scheduled for later),
    running jobs and finished ones. Analysed, and dropped at the end (the large one holds
    a million rows)."""
    size: Line = request.param
    table = f"jobs_line_{uuid.uuid4().hex[:10]}"
    url = jobqueue_postgres_url
    migrate(url, table=table)
    q = JobQueue(url, table=table)
    fills = [
        # (rows, status, turn, run_at, lease_expires_at, completed_at, attempts)
        (size.in_line, "pending", "(g / :owners)::float8", "now()", "NULL", "NULL", 0),
        (
            size.waiting,
            "pending",
            "NULL",
            "now() + CASE WHEN g % 2 = 0 THEN interval '1 hour' ELSE interval '-1 minute' END",
            "NULL",
            "NULL",
            1,
        ),
        (size.running, "processing", "g::float8", "now()", "now() + interval '1 hour'", "NULL", 1),
        (size.finished, "completed", "NULL", "now()", "NULL", "now()", 1),
    ]
    try:
        with q.engine.begin() as conn:
            for rows, status, turn, run_at, lease, completed, attempts in fills:
                conn.execute(
                    text(
                        f'INSERT INTO "{table}" (payload, status, owner_id, turn, run_at,'
                        " lease_expires_at, completed_at, attempts, locked_by)"
                        f" SELECT jsonb_build_object('n', g), '{status}',"
                        f" {OWNER}, {turn}, {run_at}, {lease}, {completed},"
                        f" {attempts}, {'$$w$$' if status == 'processing' else 'NULL'}"
                        " FROM generate_series(0, :rows - 1) AS g"
                    ),
                    {"owners": size.owners, "rows": rows},
                )
            conn.execute(text(f'ANALYZE "{table}"'))
        yield q
    finally:
        q.close()
        with q.engine.begin() as conn:
            for suffix in ("", "_limits", "_workers", "_alembic_version"):
                conn.execute(text(f'DROP TABLE IF EXISTS "{table}{suffix}"'))
            conn.execute(text(f'DROP FUNCTION IF EXISTS "{table}_notify"()'))
        q.engine.dispose()


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of the plan, depth first (init plans and subplans included)."""
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def uses_index(plan: dict[str, Any], index: str) -> bool:
    return any(i == index for _, _, i in scans(plan))


def no_seq_scan_of(plan: dict[str, Any], table: str) -> bool:
    return not any(kind == "Seq Scan" and rel == table for kind, rel, _ in scans(plan))


def largest_sort(plan: dict[str, Any]) -> float:
    """The rows the planner expects its largest sort to take (0 without one): a sort of
    the pending set would take them all."""
    return max((n["Plan Rows"] for n in nodes(plan) if n["Node Type"] == "Sort"), default=0)


def sorts_over(plan: dict[str, Any], index: str) -> bool:
    """Whether the plan sorts what it reads from ``index`` (instead of taking the index's
    own order: a probe becomes a read of every matching entry)."""
    return any(n["Node Type"] == "Sort" and uses_index(n, index) for n in nodes(plan))


def time_ms(engine: Engine, step: Direct) -> float:
    """Milliseconds to run a step on the driver connection, in a transaction rolled back
    (so the line is the same for the next statement)."""
    sql, parameters = direct.sent(step, engine.dialect)
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        start = time.perf_counter()
        raw.execute(sql, parameters).fetchall()
        elapsed = time.perf_counter() - start
        raw.rollback()
    return elapsed * 1000


def gates_for_caps(kind: str) -> list[dict[str, Any]]:
    """Gates as `claim_within` gets them: a cap on a limit key (20 running, fleet-wide) and
    a cap per owner on the queue (2 running each)."""
    return [
        {"scope": "key", "name": kind, "cap": 20, "per_owner": None, "budget": None, "paused": 0},
        {
            "scope": "queue",
            "name": "default",
            "cap": None,
            "per_owner": 2,
            "budget": None,
            "paused": 0,
        },
    ]


def test_the_claim_at_scale_is_driven_by_the_claim_index(line_queue: JobQueue) -> None:
    """The plain claim reads the head of the line from the claim index: no scan of the
    table, no sort of the pending jobs."""
    q = line_queue
    table = q.table.name
    step = q.statements.claim("explainer", limit=10, lease=30.0, queues=["default"], kinds=None)
    assert isinstance(step, Direct)
    plan = plan_of(q.engine, step)
    found = scans(plan)
    assert any(
        kind in ("Index Scan", "Index Only Scan") and index == f"{table}_claim_idx"
        for kind, _, index in found
    ), found
    assert no_seq_scan_of(plan, table), found
    # The line comes in the index's order (a sort of it would read every pending job);
    # only the few rows picked, and the expired leases, are sorted.
    assert not sorts_over(plan, f"{table}_claim_idx"), plan
    # The expired-lease probe is a range of the lease index bounded by the clock, not a
    # read of every held job's entry (a volatile clock cannot bound a scan).
    probes = [n for n in nodes(plan) if n.get("Index Name") == f"{table}_lease_idx"]
    assert probes, found
    assert all("lease_expires_at <" in n.get("Index Cond", "") for n in probes), probes
    timings = [time_ms(q.engine, step) for _ in range(3)]
    print(f"\nplain claim of 10 at {q.table.name}: " + ", ".join(f"{t:.2f} ms" for t in timings))


@pytest.mark.parametrize("owner", ["user-42", None], ids=["owned", "no_owner"])
def test_enqueue_finds_a_turn_through_the_claim_and_turn_indexes(
    line_queue: JobQueue, owner: str | None
) -> None:
    """The INSERT of one job looks up the head of its line (claim index) and its owner's
    last turn (turn index): index probes, whatever the line's length."""
    q = line_queue
    table = q.table.name
    step = q.statements.insert_many([NewJob(owner_id=owner).to_row(q.limits)])
    assert isinstance(step, Direct)
    plan = plan_of(q.engine, step)
    found = scans(plan)
    assert uses_index(plan, f"{table}_claim_idx"), found
    assert uses_index(plan, f"{table}_turn_idx"), found
    assert no_seq_scan_of(plan, table), found
    assert largest_sort(plan) == 0, plan  # each look-up is the first entry of an index


def test_the_claim_within_limits_reads_a_window_of_the_line(line_queue: JobQueue) -> None:
    """With a key cap and a per-owner cap in force, the claim reads at most the window at
    the head of the line (claim index under a LIMIT) and the running jobs from the lease
    index: no scan of the table, no sort beyond the window."""
    q = line_queue
    table = q.table.name
    step = q.statements.claim_within(
        gates_for_caps("image"),
        "explainer",
        limit=10,
        lease=30.0,
        queues=["default"],
        kinds=None,
    )
    plan = plan_of(q.engine, step)
    found = scans(plan)
    windows = [
        n for n in nodes(plan) if n["Node Type"] == "Limit" and uses_index(n, f"{table}_claim_idx")
    ]
    assert windows, found
    assert all(n["Plan Rows"] <= LINE_WINDOW for n in windows), windows
    assert uses_index(plan, f"{table}_lease_idx"), found
    assert no_seq_scan_of(plan, table), found
    assert largest_sort(plan) <= LINE_WINDOW, plan
    timings = [time_ms(q.engine, step) for _ in range(3)]
    print(
        f"\nclaim of 10 within a key cap and a per-owner cap at {q.table.name}: "
        + ", ".join(f"{t:.2f} ms" for t in timings)
    )


def test_entering_the_line_reads_the_entry_index(line_queue: JobQueue) -> None:
    """The due jobs waiting outside the line come from the entry index, and their turns
    from the claim and turn indexes."""
    q = line_queue
    table = q.table.name
    plan = plan_of(q.engine, q.statements.entering())
    found = scans(plan)
    assert uses_index(plan, f"{table}_entry_idx"), found
    assert uses_index(plan, f"{table}_claim_idx"), found
    assert uses_index(plan, f"{table}_turn_idx"), found
    assert no_seq_scan_of(plan, table), found
    # Each entering job's turn is a probe of each index, not a sort of its owner's jobs.
    assert not sorts_over(plan, f"{table}_turn_idx"), plan
    assert not sorts_over(plan, f"{table}_claim_idx"), plan


def test_the_expiry_sweep_reads_the_deadline_index(line_queue: JobQueue) -> None:
    """Finding the pending jobs past their deadline is a range scan of the deadline index
    (partial: only pending jobs that have a deadline), never a scan of the table."""
    q = line_queue
    table = q.table.name
    plan = plan_of(q.engine, q.statements.expire())
    found = scans(plan)
    assert uses_index(plan, f"{table}_deadline_idx"), found
    assert no_seq_scan_of(plan, table), found


# -- the metrics' gauges --------------------------------------------------------------------


def test_the_gauges_read_the_waiting_and_running_jobs_through_their_indexes(
    postgres_url: str, table_name: str
) -> None:
    """A long-lived table is mostly finished jobs: a scrape's backlog read must never scan
    them, only the partial indexes of the line, of the jobs waiting to enter it and of the
    held jobs; today's spend reads the jobs created today by their index."""
    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        with q.engine.begin() as conn:
            conn.execute(
                text(
                    f'INSERT INTO "{table_name}" (status, completed_at, created_at)'
                    " SELECT 'completed', now() - interval '2 days', now() - interval '2 days'"
                    " FROM generate_series(1, 30000)"
                )
            )
            conn.execute(
                text(
                    f"INSERT INTO \"{table_name}\" (status) SELECT 'pending'"
                    " FROM generate_series(1, 200)"
                )
            )
            conn.execute(text(f'ANALYZE "{table_name}"'))
        for step in (q.statements.backlog(60.0), q.statements.fleet()):
            found = scans(plan_of(q.engine, step))
            assert not any(kind == "Seq Scan" and rel == table_name for kind, rel, _ in found), (
                found
            )
        backlog = scans(plan_of(q.engine, q.statements.backlog(60.0)))
        assert {f"{table_name}_entry_idx", f"{table_name}_lease_idx"} <= {i for *_, i in backlog}
