"""Statement execution: the queue's driver fast path (`jobqueue.drivers.direct`) against
SQLAlchemy's own.

On PostgreSQL the queue runs its hot statements (`Direct` steps: one job's INSERT for
`enqueue`, `claim`, `complete_and_claim`, ...) on the driver connection under SQLAlchemy:
compiled once by SQLAlchemy, but executed without SQLAlchemy's execution context, events
and result objects. This workload measures what that saves, per operation, on each driver (psycopg
sync and async, asyncpg), so that the fast path can be kept or deleted on numbers.

Four operations, each through the queue's public method, as an app or a worker calls it:
one-job `enqueue`, `claim` of 1 and of 50, `complete_and_claim` of 50 (completing the 50
jobs the previous call claimed). Each is run by these executors of the very same statement
object with the same parameters, on a connection the queue checks out in autocommit mode:

``direct``
    the queue as shipped (`jobqueue.drivers.direct.run_direct`).
``sqlalchemy``
    `Connection.execute(statement, params)` on the same connection, with SQLAlchemy's
    compiled cache (on by default), then the rows as dicts as the queue reads any result.
``driver_sql``
    `Connection.exec_driver_sql` of the SQL the fast path compiled once, with its parameters
    and result processing: SQLAlchemy's execution context without its compiled-cache
    lookup and parameter processing.
``direct/ac_engine``, ``sqlalchemy_fetchall/ac_engine``
    the best SQLAlchemy offers, and ``direct`` on the same footing: an engine created with
    ``isolation_level="AUTOCOMMIT"`` instead of the queue's
    ``engine.execution_options(isolation_level="AUTOCOMMIT")`` (that option is applied by
    an ``engine_connect`` event, and an engine with any event listener dispatches the
    empty execution events on every statement and sets and resets the isolation level at
    every checkout), a plain dict as ``compiled_cache`` instead of the default LRU cache
    (a documented execution option), and the rows read with one `Result.fetchall` (one
    driver ``fetchall``; iterating a result, as the queue does, fetches row by row).

The executor is swapped where the driver layer's runners call it
(``jobqueue.drivers.runner.run_direct`` / ``run_direct_async``) and the ``ac_engine``
queues run their autocommit operations on that engine: this workload measures internals on
purpose, to decide how they should look.

The ceiling (``raw_exec_<operation> [driver]``) is the bare driver running the same SQL with
the same parameters on one held autocommit connection, with no job decoding: what any
executor must at least spend.

Every executor and the raw loop run in blocks, interleaved (the order rotates every round),
for several rounds; each result is the median over the rounds of the client's CPU time per
operation (`time.process_time` of this process: a shared machine's load inflates it much
less than wall time), with the wall time beside it. Ratios to ``direct`` are medians of the
per-round ratios (each round's blocks ran at nearly the same moment).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

import jobqueue.drivers.runner as runner_module
from jobqueue import AsyncJobQueue, Completion, Job, JobQueue
from jobqueue.drivers import direct
from jobqueue.drivers.engines import make_async_engine, make_engine
from jobqueue.drivers.runner import rows_of
from jobqueue.operations import Access
from jobqueue.sql.claim import completion_batch
from jobqueue.sql.steps import Direct

from . import raw
from .common import Bench, Result

OPERATIONS = ("enqueue", "claim_1", "claim_50", "complete_and_claim_50")
#: Jobs one call claims (checked after every block); complete_and_claim also completes as
#: many, and enqueue claims none.
JOBS = {"enqueue": 0, "claim_1": 1, "claim_50": 50, "complete_and_claim_50": 50}
DIRECT = "direct"
VARIANTS = (
    "direct",
    "sqlalchemy",
    "driver_sql",
    "direct/ac_engine",
    "sqlalchemy_fetchall/ac_engine",
)
RAW = "raw"
#: The decision threshold: SQLAlchemy's execution within a few percent of the driver's.
WITHIN = 1.05
WORKER = "bench-exec"
LEASE = 3600.0
WARMUP = 6  # psycopg prepares a statement server-side from its 5th run
RESULT = {"url": "https://example.invalid/image.png"}


# -- the executors swapped in where the queue runs a `Direct` step -------------------------


def _sqlalchemy(conn: Connection, step: Direct) -> list[Mapping[str, Any]]:
    return rows_of(conn.execute(step.statement, step.params))


async def _sqlalchemy_async(conn: AsyncConnection, step: Direct) -> list[Mapping[str, Any]]:
    return rows_of(await conn.execute(step.statement, step.params))


def _fetchall(result: Any) -> list[Mapping[str, Any]]:
    """The rows as dicts from one `Result.fetchall` (one driver ``fetchall``; iterating a
    result fetches row by row)."""
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.fetchall()]


def _sqlalchemy_fetchall(conn: Connection, step: Direct) -> list[Mapping[str, Any]]:
    return _fetchall(conn.execute(step.statement, step.params))


async def _sqlalchemy_fetchall_async(
    conn: AsyncConnection, step: Direct
) -> list[Mapping[str, Any]]:
    return _fetchall(await conn.execute(step.statement, step.params))


def _compiled_params(c: Any, step: Direct) -> Any:
    params = c.params(step.params)
    return params if c.positional is None else tuple(params)


def _driver_sql(conn: Connection, step: Direct) -> list[Mapping[str, Any]]:
    c = direct._compile(step, conn.dialect)
    result = conn.exec_driver_sql(c.sql, _compiled_params(c, step))
    names = list(result.keys())
    return [c.row(names, values) for values in result]


async def _driver_sql_async(conn: AsyncConnection, step: Direct) -> list[Mapping[str, Any]]:
    c = direct._compile(step, conn.dialect)
    result = await conn.exec_driver_sql(c.sql, _compiled_params(c, step))
    names = list(result.keys())
    return [c.row(names, values) for values in result]


EXECUTORS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "direct": (direct.run_direct, direct.run_direct_async),
    "sqlalchemy": (_sqlalchemy, _sqlalchemy_async),
    "sqlalchemy_fetchall": (_sqlalchemy_fetchall, _sqlalchemy_fetchall_async),
    "driver_sql": (_driver_sql, _driver_sql_async),
}


@contextmanager
def executing(kind: str) -> Iterator[None]:
    """Run the queue's `Direct` steps with executor ``kind`` inside the block."""
    # The runner module's own names for the executors, swapped for the block.
    runner: Any = runner_module
    saved = runner.run_direct, runner.run_direct_async
    runner.run_direct, runner.run_direct_async = EXECUTORS[kind]
    try:
        yield
    finally:
        runner.run_direct, runner.run_direct_async = saved


def _autocommit_on(q: JobQueue | AsyncJobQueue, engine: Any) -> None:
    """Run ``q``'s operations that need no transaction on ``engine`` (the ``ac_engine``
    variants' change)."""
    plans: Any = q._plans
    for access in (Access.READ, Access.ONE_WRITE):
        plans[access] = plans[access]._replace(engine=engine)


def _executor(variant: str) -> str:
    return variant.split("/")[0]


# -- the operations, as closures returning how many jobs they handled -----------------------


def _completions(held: Sequence[Job]) -> list[Completion]:
    return [Completion(job, RESULT) for job in held]


def _library_sync(q: JobQueue) -> dict[str, Callable[[], int]]:
    count = itertools.count()
    held: list[Job] = []

    def enqueue() -> int:
        q.enqueue("image", {**raw.PAYLOAD, "n": next(count)})
        return 0

    def claim_1() -> int:
        return len(q.claim(WORKER, limit=1, lease=LEASE))

    def claim_50() -> int:
        return len(q.claim(WORKER, limit=50, lease=LEASE))

    def complete_and_claim_50() -> int:
        nonlocal held
        if not held:
            held = q.claim(WORKER, limit=50, lease=LEASE)
        written, held = q.complete_and_claim(_completions(held), WORKER, limit=50, lease=LEASE)
        return min(len(written), len(held))

    return dict(zip(OPERATIONS, (enqueue, claim_1, claim_50, complete_and_claim_50), strict=True))


def _library_async(q: AsyncJobQueue) -> dict[str, Callable[[], Awaitable[int]]]:
    count = itertools.count()
    held: list[Job] = []

    async def enqueue() -> int:
        await q.enqueue("image", {**raw.PAYLOAD, "n": next(count)})
        return 0

    async def claim_1() -> int:
        return len(await q.claim(WORKER, limit=1, lease=LEASE))

    async def claim_50() -> int:
        return len(await q.claim(WORKER, limit=50, lease=LEASE))

    async def complete_and_claim_50() -> int:
        nonlocal held
        if not held:
            held = await q.claim(WORKER, limit=50, lease=LEASE)
        written, held = await q.complete_and_claim(
            _completions(held), WORKER, limit=50, lease=LEASE
        )
        return min(len(written), len(held))

    return dict(zip(OPERATIONS, (enqueue, claim_1, claim_50, complete_and_claim_50), strict=True))


@dataclass
class _RawStatement:
    """One of the queue's statements as the driver receives it: SQL and parameters (a dict
    for psycopg, a list in ``$n`` order for asyncpg), from the fast path's compilation."""

    sql: str
    params: Any
    names: tuple[str, ...] | None

    def slot(self, name: str) -> Any:
        return name if self.names is None else self.names.index(name)


def _raw_statements(q: JobQueue | AsyncJobQueue, dialect: Any) -> dict[str, _RawStatement]:
    s = q.statements
    row = {
        "id": uuid.uuid4(),
        "queue": "default",
        "kind": "image",
        "payload": '{"prompt": "a lighthouse"}',
        "priority": 0,
        "max_attempts": 3,
        "owner_id": None,
        "idempotency_key": None,
        "run_at_value": None,
        "delay_seconds": 0.0,
        "limit_key": None,  # the kind is the key, as for a job enqueued without one
    }
    done = [
        {
            "id": uuid.uuid4(),
            "attempt": 1,
            "started": datetime.now(UTC),
            "result": '{"url": "x"}',
            "result_url": None,
            "cost": None,
            "cost_unit": None,
        }
    ]
    steps = {
        "enqueue": s.insert_many([row]),
        "claim_1": s.claim(WORKER, limit=1, lease=LEASE, queues=("default",), kinds=None),
        "claim_50": s.claim(WORKER, limit=50, lease=LEASE, queues=("default",), kinds=None),
    }
    both = s.complete_and_claim(
        done, WORKER, limit=50, lease=LEASE, queues=("default",), kinds=None
    )
    assert both is not None
    steps["complete_and_claim_50"] = both
    out = {}
    for name, step in steps.items():
        assert isinstance(step, Direct)
        c = direct._compile(step, dialect)
        out[name] = _RawStatement(c.sql, c.params(step.params), c.positional)
    return out


def _raw_sync(conn: Any, stmts: dict[str, _RawStatement]) -> dict[str, Callable[[], int]]:
    """The bare psycopg loop for each operation."""
    ins = stmts["enqueue"]
    ins_id = ins.slot("id")
    cac = stmts["complete_and_claim_50"]
    held = _Held(cac)

    def enqueue() -> int:
        ins.params[ins_id] = uuid.uuid4()
        conn.execute(ins.sql, ins.params).fetchall()
        return 0

    def claim(stmt: _RawStatement) -> Callable[[], int]:
        return lambda: len(conn.execute(stmt.sql, stmt.params).fetchall())

    def run(stmt: _RawStatement, params: Any) -> tuple[Callable[[], list[str]], list[Any]]:
        cur = conn.execute(stmt.sql, params)
        return lambda: [d.name for d in cur.description], cur.fetchall()

    def complete_and_claim_50() -> int:
        if not held.ids:
            held.take(stmts["claim_50"], *run(stmts["claim_50"], stmts["claim_50"].params))
        return held.take(cac, *run(cac, held.params()))

    return {
        "enqueue": enqueue,
        "claim_1": claim(stmts["claim_1"]),
        "claim_50": claim(stmts["claim_50"]),
        "complete_and_claim_50": complete_and_claim_50,
    }


class _Held:
    """The jobs the raw complete-and-claim loop holds, and that statement's parameters."""

    def __init__(self, cac: _RawStatement) -> None:
        self.cac = cac
        self.slot = cac.slot("jq_batch")
        self.ids: list[Any] = []
        self.attempts: list[int] = []
        self.started: list[Any] = []
        #: statement -> (id, attempts, started_at) positions
        self.columns: dict[str, tuple[int, int, int]] = {}

    def params(self) -> Any:
        p = self.cac.params
        p[self.slot] = completion_batch(
            [
                {
                    "id": i,
                    "attempt": a,
                    "started": t,
                    "result": '{"url": "x"}',
                    "result_url": None,
                    "cost": None,
                    "cost_unit": None,
                }
                for i, a, t in zip(self.ids, self.attempts, self.started, strict=True)
            ]
        )["jq_batch"]
        return p

    def take(self, stmt: _RawStatement, names: Callable[[], list[str]], rows: Any) -> int:
        """Hold the jobs ``rows`` claimed; how many. ``names`` is read once per statement."""
        where = self.columns.get(stmt.sql)
        if where is None:
            found = names()
            where = self.columns[stmt.sql] = (
                found.index("id"),
                found.index("attempts"),
                found.index("started_at"),
            )
        i, a, t = where
        self.ids = [r[i] for r in rows if r[i] is not None]
        self.attempts = [r[a] for r in rows if r[i] is not None]
        self.started = [r[t] for r in rows if r[i] is not None]
        return len(self.ids)


def _raw_async(
    conn: Any, stmts: dict[str, _RawStatement]
) -> dict[str, Callable[[], Awaitable[int]]]:
    """The bare psycopg (async) or asyncpg loop for each operation."""
    asyncpg = hasattr(conn, "fetch")
    ins = stmts["enqueue"]
    ins_id = ins.slot("id")
    cac = stmts["complete_and_claim_50"]
    held = _Held(cac)

    async def run(stmt: _RawStatement, params: Any) -> tuple[Callable[[], list[str]], Any]:
        if asyncpg:
            records = await conn.fetch(stmt.sql, *params)
            return lambda: list(records[0].keys()), records
        cur = await conn.execute(stmt.sql, params)
        return lambda: [d.name for d in cur.description], await cur.fetchall()

    async def enqueue() -> int:
        ins.params[ins_id] = uuid.uuid4()
        await run(ins, ins.params)
        return 0

    def claim(stmt: _RawStatement) -> Callable[[], Awaitable[int]]:
        async def go() -> int:
            return len((await run(stmt, stmt.params))[1])

        return go

    async def complete_and_claim_50() -> int:
        if not held.ids:
            held.take(stmts["claim_50"], *(await run(stmts["claim_50"], stmts["claim_50"].params)))
        return held.take(cac, *(await run(cac, held.params())))

    return {
        "enqueue": enqueue,
        "claim_1": claim(stmts["claim_1"]),
        "claim_50": claim(stmts["claim_50"]),
        "complete_and_claim_50": complete_and_claim_50,
    }


# -- measuring ------------------------------------------------------------------------------


@dataclass
class _Samples:
    """Per-round CPU and wall seconds per operation of one executor."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    def add(self, cpu: float, wall: float, n: int) -> None:
        self.cpu.append(cpu / n)
        self.wall.append(wall / n)


def _check(done: int, op: str, n: int, variant: str) -> None:
    want = JOBS[op] * n
    if done != want:
        raise RuntimeError(
            f"execution {op} ({variant}): {done} jobs handled in {n} calls, expected {want}"
            " (the table ran out of pending jobs?)"
        )


def _quiet_heap() -> None:
    """Start a block with no garbage to collect: collect, then freeze what survives, so that
    the next block's collection walks only what was made since (a full collection of the
    set-up's heap took longer than a --quick block). `run` unfreezes at the end."""
    gc.collect()
    gc.freeze()


def _block_sync(fn: Callable[[], int], n: int) -> tuple[int, float, float]:
    _quiet_heap()
    done = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        done += fn()
    return done, time.process_time() - cpu, time.perf_counter() - wall


async def _block_async(fn: Callable[[], Awaitable[int]], n: int) -> tuple[int, float, float]:
    _quiet_heap()
    done = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n):
        done += await fn()
    return done, time.process_time() - cpu, time.perf_counter() - wall


def _order(round_: int) -> list[str]:
    names = [*VARIANTS, RAW]
    shift = round_ % len(names)
    return names[shift:] + names[:shift]


def _calls(bench: Bench, op: str) -> int:
    s = bench.sizes
    return s.execution_ops if JOBS[op] <= 1 else s.execution_batch_ops


def _jobs_needed(bench: Bench) -> int:
    s = bench.sizes
    blocks = s.execution_rounds + 2  # the rounds, warm-up and the first batch held
    per_executor = sum(JOBS[op] * (_calls(bench, op) * blocks + WARMUP) for op in OPERATIONS)
    return int(per_executor * (len(VARIANTS) + 1) * 1.1) + 1_000


def _paired(a: list[float], b: list[float]) -> list[float]:
    """Round-by-round ratios of two executors' samples."""
    return [x / y for x, y in zip(a, b, strict=True)]


def _emit(bench: Bench, driver: str, op: str, samples: dict[str, _Samples]) -> None:
    s = bench.sizes
    base = samples[RAW]
    raw_cpu = statistics.median(base.cpu)
    raw_wall = statistics.median(base.wall)
    raw_name = f"raw_exec_{op} [{driver}]"
    bench.ceiling(
        raw_name,
        raw_cpu * 1e6,
        unit="µs CPU/op",
        driver_name=driver,
        operation=op,
        wall_us=round(raw_wall * 1e6, 1),
        cpu_us_rounds=[round(x * 1e6, 1) for x in base.cpu],
    )
    direct = samples[DIRECT]
    same_engine = {"sqlalchemy_fetchall/ac_engine": "direct/ac_engine"}
    for variant in VARIANTS:
        got = samples[variant]
        cpu = statistics.median(got.cpu)
        wall = statistics.median(got.wall)

        cpu_to_direct = _paired(got.cpu, direct.cpu)
        wall_to_direct = _paired(got.wall, direct.wall)
        extra: dict[str, Any] = {
            "operation": op,
            "executor": variant,
            "wall_us": round(wall * 1e6, 1),
            "cpu_to_raw": round(cpu / raw_cpu, 3),
            "wall_to_raw": round(wall / raw_wall, 3),
            "calls_per_round": _calls(bench, op),
            "rounds": s.execution_rounds,
            "cpu_us_rounds": [round(x * 1e6, 1) for x in got.cpu],
            "wall_us_rounds": [round(x * 1e6, 1) for x in got.wall],
        }
        if variant == DIRECT:
            result = Result(
                f"exec_{op}:{variant}",
                cpu * 1e6,
                "µs CPU/op",
                driver=driver,
                ceiling=raw_name + " (interleaved; lower is better)",
                ratio=cpu / raw_cpu,
                extra=extra,
            )
        else:
            extra["wall_to_direct"] = round(statistics.median(wall_to_direct), 3)
            extra["cpu_to_direct_rounds"] = [round(x, 3) for x in cpu_to_direct]
            if variant in same_engine:
                other = samples[same_engine[variant]]
                extra["cpu_to_direct_same_engine"] = round(
                    statistics.median(_paired(got.cpu, other.cpu)), 3
                )
            ratio = statistics.median(cpu_to_direct)
            result = Result(
                f"exec_{op}:{variant}",
                cpu * 1e6,
                "µs CPU/op",
                driver=driver,
                ceiling=f"exec_{op}:direct (paired rounds; lower is better)",
                ratio=ratio,
                target=f"CPU <= {WITHIN} x direct" if _executor(variant) != DIRECT else None,
                met=(ratio <= WITHIN) if _executor(variant) != DIRECT else None,
                extra=extra,
            )
        bench.emit(result)


def _sync(bench: Bench) -> None:
    driver = "psycopg (sync)"
    table = bench.table("exec_sync")
    bench.fill(table, pending=_jobs_needed(bench))
    shipped = JobQueue(bench.url, table=table)
    base = make_engine(bench.url, isolation_level="AUTOCOMMIT")
    ac_engine = base.execution_options(compiled_cache={})
    tuned = JobQueue(ac_engine, table=table)
    _autocommit_on(tuned, ac_engine)
    import psycopg

    raw_conn = psycopg.connect(bench.libpq_url(), autocommit=True)
    try:
        with shipped._plans[Access.ONE_WRITE].engine.connect() as conn:
            stmts = _raw_statements(shipped, conn.dialect)
        calls: dict[str, dict[str, Callable[[], int]]] = {
            "direct": _library_sync(shipped),
            "sqlalchemy": _library_sync(shipped),
            "driver_sql": _library_sync(shipped),
            "direct/ac_engine": _library_sync(tuned),
            "sqlalchemy_fetchall/ac_engine": _library_sync(tuned),
            RAW: _raw_sync(raw_conn, stmts),
        }
        for op in OPERATIONS:
            n = _calls(bench, op)
            samples = {name: _Samples() for name in calls}
            for name, ops in calls.items():  # warm up: compile, prepare, hold a first batch
                with executing(_executor(name) if name != RAW else DIRECT):
                    for _ in range(WARMUP):
                        ops[op]()
            for r in range(bench.sizes.execution_rounds):
                for name in _order(r):
                    with executing(_executor(name) if name != RAW else DIRECT):
                        done, cpu, wall = _block_sync(calls[name][op], n)
                    _check(done, op, n, name)
                    samples[name].add(cpu, wall, n)
            _emit(bench, driver, op, samples)
    finally:
        raw_conn.close()
        shipped.close()
        base.dispose()
    bench.drop(table)


async def _async(bench: Bench, driver: str) -> None:
    table = bench.table(f"exec_{driver}")
    bench.fill(table, pending=_jobs_needed(bench))
    url = bench.async_url(driver)
    shipped = AsyncJobQueue(url, table=table)
    base_async = make_async_engine(url, isolation_level="AUTOCOMMIT")
    ac_engine = base_async.execution_options(compiled_cache={})
    tuned = AsyncJobQueue(ac_engine, table=table)
    _autocommit_on(tuned, ac_engine)
    if driver == "asyncpg":
        import asyncpg  # type: ignore[import-untyped]

        raw_conn: Any = await asyncpg.connect(bench.libpq_url())
    else:
        import psycopg

        raw_conn = await psycopg.AsyncConnection.connect(bench.libpq_url(), autocommit=True)
    try:
        async with shipped._plans[Access.ONE_WRITE].engine.connect() as conn:
            stmts = _raw_statements(shipped, conn.dialect)
        calls: dict[str, dict[str, Callable[[], Awaitable[int]]]] = {
            "direct": _library_async(shipped),
            "sqlalchemy": _library_async(shipped),
            "driver_sql": _library_async(shipped),
            "direct/ac_engine": _library_async(tuned),
            "sqlalchemy_fetchall/ac_engine": _library_async(tuned),
            RAW: _raw_async(raw_conn, stmts),
        }
        for op in OPERATIONS:
            n = _calls(bench, op)
            samples = {name: _Samples() for name in calls}
            for name, ops in calls.items():
                with executing(_executor(name) if name != RAW else DIRECT):
                    for _ in range(WARMUP):
                        await ops[op]()
            for r in range(bench.sizes.execution_rounds):
                for name in _order(r):
                    with executing(_executor(name) if name != RAW else DIRECT):
                        done, cpu, wall = await _block_async(calls[name][op], n)
                    _check(done, op, n, name)
                    samples[name].add(cpu, wall, n)
            _emit(bench, driver, op, samples)
    finally:
        await raw_conn.close()
        await shipped.close()
        await base_async.dispose()
    bench.drop(table)


def run(bench: Bench) -> None:
    if not bench.is_postgres:
        bench.note("execution: PostgreSQL only (on SQLite every statement runs through SQLAlchemy)")
        return
    try:
        _sync(bench)
        for driver in bench.async_drivers():
            asyncio.run(_async(bench, driver))
    finally:
        gc.unfreeze()
        gc.collect()
