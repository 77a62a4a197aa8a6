"""One peer workload through PgQueuer on asyncpg (runs in PgQueuer's own virtualenv).

``python bench_pgqueuer.py --url postgresql://... --workload drain --jobs 5000
--concurrency 10``: installs PgQueuer's schema in a fresh PostgreSQL schema (through the
connections' ``search_path``), runs the workload, counts by SQL, drops the schema and
prints one JSON line (see harness.py). Written against PgQueuer's documented API:
`Queries.install` / `Queries.enqueue`, `PgQueuer.entrypoint` and `PgQueuer.run`.

Concurrency c is PgQueuer's worker-wide cap ``max_concurrent_tasks=c``, which PgQueuer
requires to be at least twice ``batch_size``: batches of c // 2. At c = 1 that is not
possible; there the entrypoint's ``concurrency_limit=1`` (serialised dispatch) with batches
of one does it.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from importlib.metadata import version
from typing import Any

import asyncpg
import harness
from pgqueuer import AsyncpgPoolDriver, Job, PgQueuer, Queries
from pgqueuer.types import QueueExecutionMode

PEER = "pgqueuer"
ENTRYPOINT = "noop"


def encode(n: int) -> bytes:
    # PgQueuer's payload is bytes: the caller serialises, so the timing includes it.
    return json.dumps(harness.payload(n)).encode()


def worker(pool: asyncpg.Pool, concurrency: int, handled: list[int], started: list[float]):
    """A PgQueuer app with one no-op entrypoint, and the keyword arguments for its `run`."""
    app = PgQueuer(AsyncpgPoolDriver(pool))
    arrived = asyncio.Event()

    @app.entrypoint(ENTRYPOINT, concurrency_limit=1 if concurrency == 1 else 0)
    async def noop(job: Job) -> None:
        started.append(time.perf_counter())
        handled.append(json.loads(job.payload or b"{}")["n"])
        arrived.set()

    if concurrency == 1:
        run: dict[str, Any] = {"batch_size": 1}
    else:
        run = {"batch_size": max(1, concurrency // 2), "max_concurrent_tasks": concurrency}
    return app, run, arrived


async def completed_once(pool: asyncpg.Pool) -> int:
    """Jobs logged successful exactly once (PgQueuer deletes a finished job's row and keeps
    its history in ``pgqueuer_log``), provided none is left in the queue."""
    left = await pool.fetchval("SELECT count(*) FROM pgqueuer")
    once = await pool.fetchval(
        "SELECT count(*) FROM (SELECT job_id FROM pgqueuer_log WHERE status = 'successful'"
        " GROUP BY job_id HAVING count(*) = 1) AS s"
    )
    return int(once) if left == 0 else -int(left)


async def vacuum(pool: asyncpg.Pool) -> None:
    """VACUUM (ANALYZE) the schema's tables after the backlog's bulk load, as jobqueue's
    backlog gets (`Bench.fill`) and as autovacuum soon would: not in the timing."""
    tables = await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    for row in tables:
        await pool.execute(f'VACUUM (ANALYZE) "{row["tablename"]}"')


async def drain(task: harness.Task, pool: asyncpg.Pool, queries: Queries) -> dict[str, Any]:
    n = task.jobs
    await queries.enqueue([ENTRYPOINT] * n, [encode(i) for i in range(n)], [0] * n)
    await vacuum(pool)
    handled: list[int] = []
    app, run, _ = worker(pool, task.concurrency, handled, [])
    with harness.Stopwatch() as timed:
        # drain mode returns once the queue is empty and the last statuses are written
        await app.run(mode=QueueExecutionMode.drain, **run)
    rows = await completed_once(pool)
    return {"rows": rows, "handled": handled, **timed.fields()}


async def enqueue_one(task: harness.Task, pool: asyncpg.Pool, queries: Queries) -> dict[str, Any]:
    await queries.enqueue(ENTRYPOINT, encode(-1))
    with harness.Stopwatch() as timed:
        for i in range(task.jobs):
            await queries.enqueue(ENTRYPOINT, encode(i))
    return {"rows": await pool.fetchval("SELECT count(*) FROM pgqueuer"), **timed.fields()}


async def enqueue_batch(task: harness.Task, pool: asyncpg.Pool, queries: Queries) -> dict[str, Any]:
    n = task.jobs
    await queries.enqueue(ENTRYPOINT, encode(-1))
    with harness.Stopwatch() as timed:
        await queries.enqueue([ENTRYPOINT] * n, [encode(i) for i in range(n)], [0] * n)
    return {"rows": await pool.fetchval("SELECT count(*) FROM pgqueuer"), **timed.fields()}


async def pickup(task: harness.Task, pool: asyncpg.Pool, queries: Queries) -> dict[str, Any]:
    handled: list[int] = []
    started: list[float] = []
    app, run, arrived = worker(pool, task.concurrency, handled, started)
    # Polling only as the fallback, as by default: pickups come from LISTEN/NOTIFY.
    serving = asyncio.create_task(app.run(dequeue_timeout=timedelta(seconds=30), **run))
    await asyncio.sleep(1.0)  # PgQueuer has no "listening" signal: give it time to start
    samples = await harness.pickup_samples(
        lambda i: queries.enqueue(ENTRYPOINT, encode(i)), arrived, started, task.jobs
    )
    app.shutdown.set()
    await serving
    return {"rows": await completed_once(pool), "handled": handled, "samples": samples}


WORKLOADS = {
    harness.DRAIN: drain,
    harness.ENQUEUE_ONE: enqueue_one,
    harness.ENQUEUE_BATCH: enqueue_batch,
    harness.PICKUP: pickup,
}


async def main(task: harness.Task) -> None:
    schema = harness.schema_name(PEER)
    admin = await asyncpg.connect(task.url)
    await admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        # A pool, as PgQueuer's performance guide advises for throughput; twice the
        # concurrency, as it suggests for its size.
        pool = await asyncpg.create_pool(
            task.url,
            min_size=2,
            max_size=max(4, 2 * task.concurrency),
            server_settings={"search_path": schema},
        )
        async with pool:
            queries = Queries(AsyncpgPoolDriver(pool))
            await queries.install()
            out = await WORKLOADS[task.kind](task, pool, queries)
    finally:
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.close()
    harness.report(
        task,
        peer=PEER,
        version=version("pgqueuer"),
        driver=f"asyncpg {version('asyncpg')}",
        **out,
    )


if __name__ == "__main__":
    asyncio.run(main(harness.parse_task()))
