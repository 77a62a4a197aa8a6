"""One peer workload through Oban for Python on psycopg 3 (runs in its own virtualenv, on
Python 3.12 or later, which Oban needs).

``python bench_oban.py --url postgresql://... --workload drain --jobs 5000 --concurrency 10``:
installs Oban's tables in a fresh PostgreSQL schema (Oban's ``prefix``, and the pool's
``search_path`` for the installer), runs the workload, counts by SQL, drops the schema and
prints one JSON line (see harness.py). Written against Oban's documented API:
`oban.schema.install`, the `worker` decorator, `Oban.enqueue` / `Oban.enqueue_many`,
`Oban.start` / `Oban.stop`.

Concurrency c is the queue's limit (``queues={"default": c}``). Oban's worker has no "stop
when drained" mode: the drain is timed until the SQL count of completed jobs reaches the
backlog's size (polled every 5 ms once the handler has seen every job), as Oban keeps
completed jobs (until its pruner's max_age of a day).
"""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import version
from typing import Any

import harness
import psycopg
from oban import Job, Oban, worker
from oban.schema import install
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

PEER = "oban"
QUEUE = "default"


class Seen:
    """What the worker's handler saw (Oban instantiates the worker class itself)."""

    handled: list[int] = []
    started: list[float] = []
    arrived = asyncio.Event()
    #: set once `goal` jobs have been handled
    all_in = asyncio.Event()
    goal = 0


@worker(queue=QUEUE)
class Noop:
    async def process(self, job: Job) -> None:
        Seen.started.append(time.perf_counter())
        Seen.handled.append(job.args["n"])
        Seen.arrived.set()
        if len(Seen.handled) >= Seen.goal:
            Seen.all_in.set()


async def count(pool: AsyncConnectionPool, where: str = "") -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute(f"SELECT count(*) FROM oban_jobs {where}")).fetchone()
    return int(row[0]) if row else 0


async def completed_once(pool: AsyncConnectionPool) -> int:
    return await count(pool, "WHERE state = 'completed' AND attempt = 1")


async def vacuum(pool: AsyncConnectionPool) -> None:
    """VACUUM (ANALYZE) the schema's tables after the backlog's bulk load, as jobqueue's
    backlog gets (`Bench.fill`) and as autovacuum soon would: not in the timing."""
    async with await psycopg.AsyncConnection.connect(pool.conninfo, autocommit=True) as c:
        cur = await c.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        for (table,) in await cur.fetchall():
            await c.execute(f'VACUUM (ANALYZE) "{table}"')


async def drain(task: harness.Task, pool: AsyncConnectionPool, schema: str) -> dict[str, Any]:
    client = Oban(pool=pool, prefix=schema)
    await client.enqueue_many(Noop.new(harness.payload(i)) for i in range(task.jobs))
    await vacuum(pool)
    server = Oban(pool=pool, prefix=schema, queues={QUEUE: task.concurrency})
    Seen.goal = task.jobs
    with harness.Stopwatch() as timed:
        await server.start()
        # In-process first (free), then the SQL count for the last acknowledgements.
        await Seen.all_in.wait()
        rows = await harness.wait_for(lambda: completed_once(pool), task.jobs, timeout=60)
    await server.stop()
    return {"rows": rows, "handled": Seen.handled, **timed.fields()}


async def enqueue_one(task: harness.Task, pool: AsyncConnectionPool, schema: str) -> dict[str, Any]:
    client = Oban(pool=pool, prefix=schema)
    await client.enqueue(Noop.new(harness.payload(-1)))
    with harness.Stopwatch() as timed:
        for i in range(task.jobs):
            await client.enqueue(Noop.new(harness.payload(i)))
    return {"rows": await count(pool), **timed.fields()}


async def enqueue_batch(
    task: harness.Task, pool: AsyncConnectionPool, schema: str
) -> dict[str, Any]:
    client = Oban(pool=pool, prefix=schema)
    await client.enqueue(Noop.new(harness.payload(-1)))
    jobs = [Noop.new(harness.payload(i)) for i in range(task.jobs)]
    with harness.Stopwatch() as timed:
        await client.enqueue_many(jobs)
    return {"rows": await count(pool), **timed.fields()}


async def pickup(task: harness.Task, pool: AsyncConnectionPool, schema: str) -> dict[str, Any]:
    server = Oban(pool=pool, prefix=schema, queues={QUEUE: task.concurrency})
    await server.start()
    await asyncio.sleep(1.0)  # let its notifier and producer settle, as for every peer
    samples = await harness.pickup_samples(
        lambda i: server.enqueue(Noop.new(harness.payload(i))),
        Seen.arrived,
        Seen.started,
        task.jobs,
    )
    # Completions are acknowledged after the handler returns: wait for the last one.
    rows = await harness.wait_for(
        lambda: completed_once(pool), harness.expected_jobs(task), timeout=30
    )
    await server.stop()
    return {"rows": rows, "handled": Seen.handled, "samples": samples}


WORKLOADS = {
    harness.DRAIN: drain,
    harness.ENQUEUE_ONE: enqueue_one,
    harness.ENQUEUE_BATCH: enqueue_batch,
    harness.PICKUP: pickup,
}


async def main(task: harness.Task) -> None:
    schema = harness.schema_name(PEER)
    async with await psycopg.AsyncConnection.connect(task.url, autocommit=True) as admin:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            # Oban.create_pool's default size is 10; a queue limit above that would wait
            # for connections.
            pool = AsyncConnectionPool(
                conninfo=make_conninfo(task.url, options=f"-c search_path={schema}"),
                min_size=2,
                max_size=max(10, task.concurrency + 2),
                open=False,
            )
            await pool.open()
            try:
                await install(pool, prefix=schema)
                out = await WORKLOADS[task.kind](task, pool, schema)
            finally:
                await pool.close()
        finally:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    harness.report(
        task,
        peer=PEER,
        version=version("oban"),
        driver=f"psycopg {version('psycopg')} ({psycopg.pq.__impl__})",
        **out,
    )


if __name__ == "__main__":
    asyncio.run(main(harness.parse_task()))
