"""One peer workload through procrastinate on psycopg 3 (runs in its own virtualenv).

``python bench_procrastinate.py --url postgresql://... --workload drain --jobs 5000
--concurrency 10``: applies procrastinate's schema in a fresh PostgreSQL schema (through the
connections' ``search_path``), runs the workload, counts by SQL, drops the schema and
prints one JSON line (see harness.py). Written against procrastinate's documented API:
`PsycopgConnector`, `App.task`, `Task.defer_async` / `Task.batch_defer_async`,
`App.run_worker_async` and `schema_manager.apply_schema_async`.

Concurrency c is the worker's ``concurrency=c``. Finished jobs stay in the table
(``delete_jobs="never"``, the default), which is what the SQL count reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from importlib.metadata import version
from typing import Any

import harness
import procrastinate
import psycopg
from psycopg.conninfo import make_conninfo

PEER = "procrastinate"


class Run:
    """The app, its no-op task and what the task saw."""

    def __init__(self, conninfo: str, concurrency: int) -> None:
        self.conninfo = conninfo
        # The pool holds a connection per running job, plus the listener's and the
        # fetcher's: psycopg_pool's default of 4 would queue jobs behind connections.
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=conninfo, min_size=2, max_size=max(4, concurrency + 2)
            )
        )
        self.handled: list[int] = []
        self.started: list[float] = []
        self.arrived = asyncio.Event()

        @self.app.task(name="noop")
        async def noop(n: int, **_: Any) -> None:
            self.started.append(time.perf_counter())
            self.handled.append(n)
            self.arrived.set()

        self.task = noop

    async def count(self, where: str) -> int:
        async with self.app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            row = await (
                await conn.execute(f"SELECT count(*) FROM procrastinate_jobs {where}")
            ).fetchone()
        return int(row[0])

    async def completed_once(self) -> int:
        return await self.count("WHERE status = 'succeeded' AND attempts = 1")

    async def vacuum(self) -> None:
        """VACUUM (ANALYZE) the schema's tables after the backlog's bulk load, as jobqueue's
        backlog gets (`Bench.fill`) and as autovacuum soon would: not in the timing."""
        async with await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True) as c:
            cur = await c.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
            for (table,) in await cur.fetchall():
                await c.execute(f'VACUUM (ANALYZE) "{table}"')


async def drain(task: harness.Task, run: Run) -> dict[str, Any]:
    await run.task.batch_defer_async(*(harness.payload(i) for i in range(task.jobs)))
    await run.vacuum()
    with harness.Stopwatch() as timed:
        # wait=False: the worker returns once it has caught up with the queue
        await run.app.run_worker_async(
            concurrency=task.concurrency, wait=False, install_signal_handlers=False
        )
    return {"rows": await run.completed_once(), "handled": run.handled, **timed.fields()}


async def enqueue_one(task: harness.Task, run: Run) -> dict[str, Any]:
    await run.task.defer_async(**harness.payload(-1))
    with harness.Stopwatch() as timed:
        for i in range(task.jobs):
            await run.task.defer_async(**harness.payload(i))
    return {"rows": await run.count(""), **timed.fields()}


async def enqueue_batch(task: harness.Task, run: Run) -> dict[str, Any]:
    await run.task.defer_async(**harness.payload(-1))
    jobs = [harness.payload(i) for i in range(task.jobs)]
    with harness.Stopwatch() as timed:
        await run.task.batch_defer_async(*jobs)
    return {"rows": await run.count(""), **timed.fields()}


async def pickup(task: harness.Task, run: Run) -> dict[str, Any]:
    serving = asyncio.create_task(
        run.app.run_worker_async(concurrency=task.concurrency, install_signal_handlers=False)
    )
    await asyncio.sleep(1.0)  # no public "listening" signal: give the worker time to start
    samples = await harness.pickup_samples(
        lambda i: run.task.defer_async(**harness.payload(i)), run.arrived, run.started, task.jobs
    )
    # Cancelling the worker's task is its documented graceful stop.
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    return {"rows": await run.completed_once(), "handled": run.handled, "samples": samples}


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
            run = Run(make_conninfo(task.url, options=f"-c search_path={schema}"), task.concurrency)
            async with run.app.open_async():
                await run.app.schema_manager.apply_schema_async()
                out = await WORKLOADS[task.kind](task, run)
        finally:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    harness.report(
        task,
        peer=PEER,
        version=version("procrastinate"),
        driver=f"psycopg {version('psycopg')} ({psycopg.pq.__impl__})",
        **out,
    )


if __name__ == "__main__":
    asyncio.run(main(harness.parse_task()))
