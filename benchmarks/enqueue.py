"""Enqueue throughput: one job per call and transaction, and one `enqueue_many` batch.

Each runs with the sync queue (psycopg or pysqlite) and with the async queue on every
asyncio driver, on a fresh table, and is compared with the raw single-row INSERT loop and
with the faster of multi-row INSERT and COPY.
"""

from __future__ import annotations

import asyncio
import time

from jobqueue import AsyncJobQueue, JobQueue, NewJob

from . import raw
from .common import Bench, Result

ONE_TARGET = 0.8
MANY_TARGET = 0.7


def _payload(n: int) -> dict[str, object]:
    return {**raw.PAYLOAD, "n": n}


def _one(bench: Bench, driver: str, rate: float, n: int) -> None:
    bench.emit(
        Result(
            "enqueue_one",
            rate,
            "jobs/s",
            driver=driver,
            ceiling=raw.INSERT_ONE,
            target=f"ratio >= {ONE_TARGET}",
            min_ratio=ONE_TARGET,
            extra={"jobs": n},
        )
    )


def _many(bench: Bench, driver: str, rate: float, n: int) -> None:
    bench.emit(
        Result(
            "enqueue_many",
            rate,
            "jobs/s",
            driver=driver,
            ceiling=raw.INSERT_BEST,
            target=f"ratio >= {MANY_TARGET}",
            min_ratio=MANY_TARGET,
            extra={"jobs": n},
        )
    )


def _sync(bench: Bench) -> None:
    s = bench.sizes
    driver = "psycopg (sync)" if bench.is_postgres else "pysqlite (sync)"
    table = bench.table("enq_one_sync")
    with JobQueue(bench.url, table=table) as q:
        q.enqueue("image", _payload(-1))  # connect and warm caches outside the timing
        start = time.perf_counter()
        for i in range(s.enqueue_one):
            q.enqueue("image", _payload(i))
        _one(bench, driver, s.enqueue_one / (time.perf_counter() - start), s.enqueue_one)
    bench.drop(table)

    table = bench.table("enq_many_sync")
    jobs = [NewJob(kind="image", payload=_payload(i)) for i in range(s.enqueue_many)]
    with JobQueue(bench.url, table=table) as q:
        q.enqueue("image", _payload(-1))
        start = time.perf_counter()
        done = q.enqueue_many(jobs)
        _many(bench, driver, len(done) / (time.perf_counter() - start), s.enqueue_many)
    bench.drop(table)


async def _async(bench: Bench, driver: str) -> None:
    s = bench.sizes
    table = bench.table(f"enq_one_{driver}")
    async with AsyncJobQueue(bench.async_url(driver), table=table) as q:
        await q.enqueue("image", _payload(-1))
        start = time.perf_counter()
        for i in range(s.enqueue_one):
            await q.enqueue("image", _payload(i))
        _one(bench, driver, s.enqueue_one / (time.perf_counter() - start), s.enqueue_one)
    bench.drop(table)

    table = bench.table(f"enq_many_{driver}")
    jobs = [NewJob(kind="image", payload=_payload(i)) for i in range(s.enqueue_many)]
    async with AsyncJobQueue(bench.async_url(driver), table=table) as q:
        await q.enqueue("image", _payload(-1))
        start = time.perf_counter()
        done = await q.enqueue_many(jobs)
        _many(bench, driver, len(done) / (time.perf_counter() - start), s.enqueue_many)
    bench.drop(table)


def run(bench: Bench) -> None:
    _sync(bench)
    for driver in bench.async_drivers():
        asyncio.run(_async(bench, driver))
